"""The interfaces every placement policy and queue ordering implements.

The same policy objects run inside the serving placement actor and inside the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from placement.state import Request, WorkerState


class PlacementPolicy(Protocol):
    """Chooses a worker for a new request, or None to make it wait."""

    name: str

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        """The worker to place `request` on; None if it should wait (no worker fits)."""
        ...


class QueueOrder(Protocol):
    """Orders waiting requests: the smallest key is served first."""

    name: str

    def key(self, request: Request, now_s: float) -> float:
        ...
