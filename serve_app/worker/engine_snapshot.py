"""The latest scheduler figures of a worker's engine (vLLM or sim), read by `LLMWorker.stats`."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice

from placement.latency_correction import EngineWork


class PrefillProgress:
    """The prompts an engine is prefilling, in the order vLLM's scheduler gives them chunks
    (oldest first: a prompt partly computed is running and goes before the waiting ones), and
    how far each has got. An iteration's chunk tokens, handed out in that order, say how much
    attention work its chunks did ((c + t)^2 - c^2 for t tokens after c computed), which vLLM's
    iteration details do not. A prompt's cached prefix is not known until its first token, so
    its chunks are counted from 0: a little low for a prompt with a long cached prefix."""

    def __init__(self) -> None:
        self._prompts: OrderedDict[str, list[int]] = OrderedDict()  # id -> [prompt tokens, computed]

    def add(self, request_id: str, prompt_tokens: int) -> None:
        self._prompts[request_id] = [prompt_tokens, 0]

    def done(self, request_id: str) -> None:
        """Its prefill is over (its first token came out) or it left."""
        self._prompts.pop(request_id, None)

    def chunks(self, requests: int, tokens: int) -> float:
        """An iteration gave `tokens` prompt tokens to its first `requests` prompts: their
        squared-token work."""
        squared = 0.0
        for i, progress in enumerate(islice(self._prompts.values(), requests)):
            length, computed = progress
            last = i == requests - 1
            take = tokens if last else min(tokens, max(length - computed, 0))
            squared += (computed + take) ** 2 - computed**2
            progress[1] = computed + take
            tokens -= take
            if tokens <= 0:
                break
        return squared


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
    prefilling: PrefillProgress = field(default_factory=PrefillProgress)
    # when the last iteration was recorded, and whether the engine had requests left after it
    _last_iteration_s: float | None = None
    _work_left: bool = False

    def iteration_busy_s(self, now_s: float, engine_s: float, work_left: bool) -> float:
        """The wall time the iteration recorded at `now_s` took: since the previous one was
        recorded if the engine had requests left then (its loop went straight on, so
        scheduling, output processing and the model all count, as they do between a request's
        tokens), else the engine's own timing of it (`engine_s`: vLLM times only the model's
        execution; it started from idle). `work_left`: requests remain after this iteration."""
        previous, self._last_iteration_s = self._last_iteration_s, now_s
        went_on, self._work_left = self._work_left, work_left
        if previous is None or not went_on:
            return engine_s
        # at least the engine's timing: a record the front end handled late is followed by
        # one handled early
        return max(now_s - previous, engine_s)

    def take_work(self) -> EngineWork:
        """The work accumulated so far, and start again from none."""
        work, self.work = self.work, EngineWork()
        return work

    def give_back_work(self, work: EngineWork) -> None:
        """Work taken for a report that did not get through: it goes out with the next one."""
        self.work = work + self.work
