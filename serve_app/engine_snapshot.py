"""The latest scheduler figures of a worker's engine (vLLM or sim), read by `LLMWorker.stats`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineSnapshot:
    """Running/waiting requests and KV cache use, as the engine's last iteration left them."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    kv_blocks_total: int = 0
    block_size: int = 0
