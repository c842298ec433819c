"""The interfaces every placement policy and queue ordering implements.

The same policy objects run inside the serving placement actor and inside the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from placement.state import Request, WorkerState


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and what placement promised it. `feasible`: the worker fits it by
    the policy's own test (False with a worker: nothing fitted and it was overcommitted there;
    with None: it waits). `ttft_lost`: no worker could meet its TTFT any more, so only its
    other SLOs were weighed. `unfit`: nothing fitted though a candidate worker was empty, so
    no added worker would have fitted it either (a scaler must not read it as demand).
    `risked`: feasible only with the stall test relaxed (admission's last chance), so the
    residents of its worker lost their ATGT promises. Baselines test nothing: any worker they
    pick is `feasible`."""

    worker: WorkerState | None
    feasible: bool
    ttft_lost: bool = False
    unfit: bool = False
    risked: bool = False


class PlacementPolicy(Protocol):
    """Chooses a worker for a new request, or None to make it wait."""

    name: str

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        """The worker to place `request` on; None if it should wait (no worker fits)."""
        ...

    def decide(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> Decision:
        """`choose`, with what the choice promised."""
        ...


class QueueOrder(Protocol):
    """Orders waiting requests: the smallest key is served first."""

    name: str

    def key(self, request: Request, now_s: float) -> float:
        ...
