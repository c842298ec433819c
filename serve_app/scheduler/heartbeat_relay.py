"""Per-node heartbeat relays (`placement.heartbeat_relay`): the workers of one Ray node report
through one relay actor on that node, which hands their reports to the placement actor in one
call (`heartbeat_many`) per tick instead of one call per worker.

Why: a call costs the placement actor Ray's per-call handling (a task received, its argument
deserialized, its reply sent, a turn of its event loop) on top of applying the report, and at
hundreds of workers the heartbeats are most of the actor's calls (4 a second per worker at
0.25 s). Measured with `aladdin bench-actor` at 256 workers (BENCHMARKS.md, "Heartbeats relayed
per node"): reports grouped 8 to a call roughly doubled the placements/s one actor sustains. The
relay's own cost (the per-worker calls) lands on the node of the workers it relays for.

How: with relays on, each worker reports on its node's tick (`next_tick_s`: a phase within the
period fixed by the node's id, so one node's workers report together and the nodes spread over
the period), and the relay coalesces what arrives within `RELAY_LINGER_SHARE` of a period
(`CallCoalescer` with a linger). Each worker gets its own reply, as from the actor itself.

Failure: a relay that cannot reach the placement actor fails that batch's calls; each worker
then does what it does when the actor fails (its next report is full, and it looks the relay up
again), and the relay looks the actor up again on its next batch. A relay that died is created
again by the next worker that looks for it. Relays are detached (no worker owns them: any may
create them) and exit once idle, like the placement actor (`placement_actor.IDLE_EXIT_S`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from placement.live import WorkerReport
from serve_app.config import AppConfig
from serve_app.scheduler.call_coalescer import CallCoalescer
from serve_app.scheduler.placement_actor import NAMESPACE, exit_when_idle, get_placement_actor, placement_actor_name

# A relay waits this share of the heartbeat period after the first report of a tick before
# forwarding: one node's workers wake on the same tick but their event loops answer a few ms
# apart (engine streams), and each report left out of the batch costs the actor one more call
RELAY_LINGER_SHARE = 0.02


def tick_batcher(
    send: Callable[[list[WorkerReport]], Awaitable[Sequence[dict[str, Any]]]], heartbeat_s: float,
) -> CallCoalescer[WorkerReport, dict[str, Any]]:
    """How a relay gathers one tick's reports into one `send` (its `CallCoalescer`, lingering
    `RELAY_LINGER_SHARE` of the period); `aladdin bench-actor` relays its simulated nodes' reports
    through the same."""
    return CallCoalescer(send, linger_s=RELAY_LINGER_SHARE * heartbeat_s)


def relay_name(app_name: str, config: dict[str, Any], shard: int, node_id: str) -> str:
    """The relay of shard `shard`'s placement actor on node `node_id`."""
    return f"relay:{placement_actor_name(app_name, config, shard)}@{node_id}"


def tick_phase_s(node_id: str, period_s: float) -> float:
    """Where in each period the workers of node `node_id` report: a fixed offset from the node
    id's digest, so they report together and nodes spread over the period."""
    fraction = int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:8], "big") / 2**64
    return fraction * period_s


def next_tick_s(now_s: float, period_s: float, phase_s: float) -> float:
    """The first time after `now_s` (wall clock, shared by a node's processes) that is `phase_s`
    past a multiple of `period_s`."""
    return (math.floor((now_s - phase_s) / period_s) + 1) * period_s + phase_s


def get_heartbeat_relay(app_name: str, config: dict[str, Any], shard: int, node_id: str) -> ray.actor.ActorHandle:
    """The relay to shard `shard`'s placement actor on node `node_id`, created on first use."""
    return HeartbeatRelay.options(
        name=relay_name(app_name, config, shard, node_id), namespace=NAMESPACE, get_if_exists=True,
        lifetime="detached", max_restarts=-1, num_cpus=0, max_concurrency=1000,
        # on the workers' node, outside the creating replica's placement group (an explicit
        # strategy is never captured by it)
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        enable_task_events=False,  # as the placement actor: calls on every tick
    ).remote(app_name, config, shard)


@ray.remote
class HeartbeatRelay:
    """Forwards the reports of one node's workers to one placement actor (see the module
    docstring)."""

    def __init__(self, app_name: str, config: dict[str, Any], shard: int) -> None:
        placement = AppConfig.model_validate(config).placement
        self._app_name, self._config, self._shard = app_name, config, shard
        # the worker's own heartbeat call is bounded by max(2, 8 periods): fail before it does
        self._timeout_s = max(1.0, 4 * placement.heartbeat_s)
        self._placement: Any = None
        self._reports = tick_batcher(self._forward, placement.heartbeat_s)
        self._last_call = time.monotonic()
        self._idle_task = asyncio.get_event_loop().create_task(
            exit_when_idle(lambda: self._last_call, "heartbeat relay"))

    async def heartbeat(self, report: WorkerReport) -> dict[str, Any]:
        """The placement actor's reply to `report` (PlacementActor.heartbeat)."""
        self._last_call = time.monotonic()
        return await self._reports.call(report)

    async def _forward(self, reports: list[WorkerReport]) -> list[dict[str, Any]]:
        if self._placement is None:
            self._placement = get_placement_actor(self._app_name, self._config, self._shard)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._placement.heartbeat_many.remote(reports)
        except Exception:
            self._placement = None  # look it up again: it may have been restarted or recreated
            raise

    async def stats(self) -> dict[str, int]:
        """Calls forwarded to the placement actor and the reports they carried."""
        return {"calls": self._reports.calls, "reports": self._reports.items}

