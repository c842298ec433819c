"""Open-loop load generation against an OpenAI-compatible endpoint, and its latency summary.

Arrivals are Poisson (exponential gaps) and never wait for earlier responses. Output lengths
are forced with `max_tokens` + `ignore_eos`, as vLLM's own benchmarks do.
TTFT = first streamed token - send time; ATGT = (last token - first token) / (tokens - 1).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from predictors.sharegpt import iter_prompt_reply_pairs


@dataclass(frozen=True)
class WorkItem:
    """One request to send: its prompt, forced output length and arrival offset (s)."""

    prompt: str
    max_tokens: int
    arrival_s: float


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float | None = None
    atgt_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


def sharegpt_workload(
    tokenizer: Any,
    num_requests: int,
    rate: float,
    *,
    seed: int = 0,
    max_prompt_tokens: int = 512,
    max_output_tokens: int = 256,
    min_output_tokens: int = 4,
) -> list[WorkItem]:
    """ShareGPT first-turn prompts with their reply's token length as the forced output length."""
    rng = random.Random(seed)
    pairs = list(iter_prompt_reply_pairs(limit=max(num_requests * 20, 200)))
    rng.shuffle(pairs)
    items: list[WorkItem] = []
    t = 0.0
    for prompt, reply in pairs:
        ids = tokenizer(prompt).input_ids
        if len(ids) > max_prompt_tokens:
            prompt = tokenizer.decode(ids[:max_prompt_tokens])
        out = min(max(len(tokenizer(reply).input_ids), min_output_tokens), max_output_tokens)
        t += rng.expovariate(rate)
        items.append(WorkItem(prompt=prompt, max_tokens=out, arrival_s=t))
        if len(items) == num_requests:
            break
    return items


async def _send(client: httpx.AsyncClient, model: str, item: WorkItem) -> RequestResult:
    body = {
        "model": model,
        "prompt": item.prompt,
        "max_tokens": item.max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    usage: dict[str, int] = {}
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                return RequestResult(ok=False, error=f"HTTP {resp.status_code}: {text[:200]}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return RequestResult(ok=False, error=event["error"].get("message"))
                if event.get("usage"):
                    usage = event["usage"]
                if event.get("choices"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
    except httpx.HTTPError as exc:
        return RequestResult(ok=False, error=repr(exc))
    if first is None or last is None:
        return RequestResult(ok=False, error="no tokens streamed")
    n_out = usage.get("completion_tokens", 0)
    return RequestResult(
        ok=True,
        ttft_s=first - start,
        atgt_s=(last - first) / (n_out - 1) if n_out > 1 else None,
        latency_s=last - start,
        prompt_tokens=usage.get("prompt_tokens", 0),
        output_tokens=n_out,
    )


async def run_open_loop(
    base_url: str, model: str, workload: list[WorkItem], *, timeout_s: float = 300.0
) -> tuple[list[RequestResult], float]:
    """Send `workload` on its arrival schedule; return per-request results and wall time."""
    limits = httpx.Limits(max_connections=len(workload) + 1)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()

        async def fire(item: WorkItem) -> RequestResult:
            await asyncio.sleep(max(0.0, item.arrival_s - (time.perf_counter() - t0)))
            return await _send(client, model, item)

        results = await asyncio.gather(*(fire(item) for item in workload))
        return list(results), time.perf_counter() - t0


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(results: list[RequestResult], wall_s: float) -> dict[str, Any]:
    """Counts, TTFT/ATGT p50/p99 (ms) and throughput of one run."""
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None]
    atgt = [r.atgt_s * 1e3 for r in ok if r.atgt_s is not None]
    out_tokens = sum(r.output_tokens for r in ok)
    return {
        "requests": len(results),
        "succeeded": len(ok),
        "failed": len(results) - len(ok),
        "wall_s": round(wall_s, 3),
        "ttft_ms_p50": _pct(ttft, 50),
        "ttft_ms_p99": _pct(ttft, 99),
        "atgt_ms_p50": _pct(atgt, 50),
        "atgt_ms_p99": _pct(atgt, 99),
        "output_tokens": out_tokens,
        "output_tokens_per_s": round(out_tokens / wall_s, 2) if wall_s > 0 else None,
        "errors": sorted({r.error for r in results if r.error})[:5],
    }
