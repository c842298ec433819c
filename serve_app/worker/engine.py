"""The engine a worker runs, behind one interface: vLLM (`serve_app.worker.vllm_engine`) or the `sim`
engine (`serve_app.worker.sim_engine`), chosen once when the worker starts. Both write their
scheduler figures to the worker's `EngineSnapshot` (its stats)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from serve_app.config import AppConfig
from serve_app.worker.engine_snapshot import EngineSnapshot
from serve_app.worker.worker_protocol import GenerateChunk


class InvalidRequest(ValueError):
    """The request cannot run as given (sampling parameters, prompt length): a client error."""


class Engine(Protocol):
    """What a worker needs of its engine. Its stats are not a method: the engine keeps the
    worker's `EngineSnapshot` (given to `start_engine`) current as it runs, so reading them
    never waits on the engine."""

    def generate(self, prompt_token_ids: list[int], sampling: dict[str, Any],
                 request_id: str, cache_salt: str | None = None) -> AsyncIterator[GenerateChunk]:
        """Stream the request's output as deltas; the last chunk carries the finish reason.
        `sampling` holds vLLM SamplingParams keyword arguments; `cache_salt` keeps the prompt's
        prefix-cache blocks apart from other salts'. Raises InvalidRequest before the first
        chunk for a request the engine cannot run."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine has died."""
        ...

    def shutdown(self) -> None:
        """Stop the engine and its processes."""
        ...


def start_engine(config: AppConfig, snapshot: EngineSnapshot) -> Engine:
    """The engine `config.engine.kind` names, started."""
    if config.engine.kind == "sim":
        from serve_app.worker.sim_engine import SimEngine

        engine = config.engine
        return SimEngine(config.placement_profile(), max_num_seqs=engine.max_num_seqs,
                         max_model_len=engine.max_model_len, snapshot=snapshot, seed=engine.seed,
                         prefix_caching=engine.enable_prefix_caching)
    from serve_app.worker.vllm_engine import VllmEngine

    return VllmEngine(config, snapshot)
