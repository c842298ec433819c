"""The latest scheduler figures of a worker's engine (vLLM or sim), read by `LLMWorker.stats`."""

from __future__ import annotations

from dataclasses import dataclass, field

from placement.latency_correction import EngineWork


@dataclass
class EngineSnapshot:
    """Running/waiting requests and KV cache use, as the engine's last iteration left them, and
    the work its iterations did since the worker last took it (for placement's correction)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    kv_blocks_total: int = 0
    block_size: int = 0
    work: EngineWork = field(default_factory=EngineWork)

    def take_work(self) -> EngineWork:
        """The work accumulated so far, and start again from none."""
        work, self.work = self.work, EngineWork()
        return work

    def give_back_work(self, work: EngineWork) -> None:
        """Work taken for a report that did not get through: it goes out with the next one."""
        self.work = work + self.work
