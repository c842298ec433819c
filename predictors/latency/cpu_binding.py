"""Core binding for tensor-parallel ranks of vLLM's CPU engine (it refuses TP > 1 without one)."""

from __future__ import annotations

import os


def cpu_rank_binding(tp: int, cores: list[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND value giving each of `tp` ranks its own share of `cores`
    (default: the cores this process may run on)."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    if len(cores) < tp:
        raise ValueError(f"tensor_parallel_size={tp} needs at least {tp} CPU cores, have {len(cores)}")
    share = len(cores) // tp
    groups = [cores[i * share : (i + 1) * share] for i in range(tp)]
    return "|".join(",".join(str(c) for c in group) for group in groups)
