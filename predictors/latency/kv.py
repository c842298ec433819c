"""KV-cache sizing formulas (one source for the profilers, the simulator and the docs)."""

from __future__ import annotations

GIB = 1024**3


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    """Bytes of K and V one token occupies over the whole model: 2 x layers x kv_heads x head_dim x dtype."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def gpu_kv_blocks(
    *,
    gpu_memory_bytes: int,
    tp: int,
    num_params: int,
    bytes_per_token: int,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    activation_reserve_bytes_per_gpu: int = 2 * GIB,
    weight_bytes_per_param: int = 2,
) -> int:
    """KV blocks of a worker of `tp` GPUs, as vLLM sizes its cache.

    Per GPU: memory x utilization - weights / tp - activation reserve is left for KV, and each
    GPU holds 1/tp of every token's KV (heads are split), so the worker holds
    tp x free_per_gpu / bytes_per_token tokens. 0 when the weights do not fit.
    """
    free_per_gpu = (
        gpu_memory_bytes * gpu_memory_utilization
        - num_params * weight_bytes_per_param / tp
        - activation_reserve_bytes_per_gpu
    )
    if free_per_gpu <= 0:
        return 0
    return int(tp * free_per_gpu // (bytes_per_token * block_size))
