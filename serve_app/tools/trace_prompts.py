"""Prompts for trace replay: real ShareGPT text cut to each trace request's prompt length.

Traces carry lengths, not text. Each request's prompt is a slice of a pool of ShareGPT
prompt tokens, `input_len` long; its reply length is forced to the trace's `output_len`.
Mooncake requests name 512-token prefix blocks (`hash_ids`): a block id always maps to the
same slice, so requests sharing a prefix in the trace share it here too (prefix caches and
prefix-aware routers see the trace's reuse).
"""

from __future__ import annotations

import random
from typing import Any

from placement.traces import TraceRequest
from predictors.sharegpt import iter_prompt_reply_pairs
from serve_app.tools.loadgen import WorkItem

#: tokens per Mooncake prefix block (the trace format's block size)
BLOCK_TOKENS = 512
_MIN_POOL_TOKENS = 100_000


def sharegpt_token_pool(tokenizer: Any, min_tokens: int) -> list[int]:
    """Token ids of ShareGPT first-turn prompts, concatenated until at least `min_tokens`."""
    pool: list[int] = []
    for prompt, _ in iter_prompt_reply_pairs():
        pool.extend(tokenizer(prompt + "\n\n", add_special_tokens=False, verbose=False).input_ids)
        if len(pool) >= min_tokens:
            return pool
    raise ValueError(f"ShareGPT holds fewer than {min_tokens} prompt tokens for this tokenizer")


def _prompt_ids(req: TraceRequest, pool: list[int], rng: random.Random, seed: int) -> list[int]:
    if req.hash_ids:
        ids: list[int] = []
        for block in req.hash_ids:
            start = random.Random(f"{seed}:{block}").randrange(len(pool) - BLOCK_TOKENS)
            ids.extend(pool[start:start + BLOCK_TOKENS])
            if len(ids) >= req.input_len:
                break
        if len(ids) >= req.input_len:
            return ids[:req.input_len]
        start = rng.randrange(len(pool) - req.input_len)  # blocks shorter than the prompt: pad
        return (ids + pool[start:start + req.input_len])[:req.input_len]
    start = rng.randrange(len(pool) - req.input_len)
    return pool[start:start + req.input_len]


def _text_of_length(tokenizer: Any, ids: list[int]) -> str:
    """Text whose tokenization is at most len(ids) tokens: decoding a slice that starts or ends
    inside a word can re-tokenize a little longer, so trim and decode again until it fits."""
    text = tokenizer.decode(ids)
    for _ in range(4):
        again = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
        if len(again) <= len(ids):
            break
        text = tokenizer.decode(again[:len(ids)])
    return text


def trace_workload(trace: list[TraceRequest], tokenizer: Any, *, seed: int = 0) -> list[WorkItem]:
    """One WorkItem per trace request: a ShareGPT prompt of (at most, and within a token or two
    of) the request's input length, its output length forced."""
    if not trace:
        return []
    longest = max(r.input_len for r in trace)
    pool = sharegpt_token_pool(tokenizer, max(_MIN_POOL_TOKENS, 4 * longest))
    rng = random.Random(seed)
    return [
        WorkItem(
            prompt=_text_of_length(tokenizer, _prompt_ids(req, pool, rng, seed)),
            max_tokens=max(1, req.output_len),
            arrival_s=req.arrival_s,
            input_len=req.input_len,
        )
        for req in trace
    ]
