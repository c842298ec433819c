"""Orderings of waiting requests (UELLM, arXiv 2409.14961) and the waiting queue itself.

The smallest key is served first:
- `fifo`: arrival time.
- `slo-dbs` (SLO deadline-based): the TTFT deadline, arrival + SLO TTFT.
- `odbs` (output-driven): the predicted output length (shortest first), which packs more
  requests into a batch's time and KV budget.
- `slo-odbs`: the TTFT deadline plus `length_weight` x the request's decode budget
  (predicted mean length x its SLO ATGT), i.e. with weight 1 the time by which it should have
  finished: urgent requests first, and among equally urgent ones the shorter.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from placement.demand import Demand
from placement.policy import Decision, PlacementPolicy, QueueOrder
from placement.state import Request, WorkerState


class FifoOrder:
    name = "fifo"

    def key(self, request: Request, now_s: float) -> float:
        return request.arrival_s


class SloDeadlineOrder:
    name = "slo-dbs"

    def key(self, request: Request, now_s: float) -> float:
        return request.ttft_deadline_s


class OutputLengthOrder:
    name = "odbs"

    def key(self, request: Request, now_s: float) -> float:
        return request.est_mean


class SloOutputOrder:
    name = "slo-odbs"

    def __init__(self, length_weight: float = 1.0) -> None:
        if length_weight < 0:
            raise ValueError("length_weight must be >= 0")
        self.length_weight = length_weight

    def key(self, request: Request, now_s: float) -> float:
        return request.ttft_deadline_s + self.length_weight * request.est_mean * request.slo_atgt_s


_ORDERS: dict[str, Callable[..., QueueOrder]] = {
    "fifo": FifoOrder,
    "slo-dbs": SloDeadlineOrder,
    "odbs": OutputLengthOrder,
    "slo-odbs": SloOutputOrder,
}

QUEUE_ORDER_NAMES: tuple[str, ...] = tuple(_ORDERS)


def make_queue_order(name: str, **options: float) -> QueueOrder:
    """A queue ordering by name: `fifo`, `slo-dbs`, `odbs` or `slo-odbs`."""
    try:
        factory = _ORDERS[name]
    except KeyError:
        raise ValueError(f"unknown queue order {name!r}; valid: {', '.join(QUEUE_ORDER_NAMES)}") from None
    return factory(**options)


@dataclass
class WaitingQueue:
    """Requests no worker could take, in `order`; keys are computed once, on push (every
    ordering above is time-independent). Ties keep push order."""

    order: QueueOrder
    _heap: list[tuple[float, int, Request]] = field(default_factory=list)
    _pushed: int = 0
    demand: Demand = field(default_factory=Demand)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        """Waiting requests in service order."""
        return (entry[2] for entry in sorted(self._heap))

    def push(self, request: Request, now_s: float) -> None:
        heapq.heappush(self._heap, (self.order.key(request, now_s), self._pushed, request))
        self._pushed += 1
        self.demand.add(request)

    def pop(self) -> Request:
        """Remove and return the first request to serve."""
        request = heapq.heappop(self._heap)[2]
        self.demand.discard(request)
        return request

    def remove_if(self, predicate: Callable[[Request], bool]) -> list[Request]:
        """Take out the waiting requests matching `predicate`; returns them in service order."""
        removed = sorted(e for e in self._heap if predicate(e[2]))
        if removed:
            self._heap = [e for e in self._heap if not predicate(e[2])]
            heapq.heapify(self._heap)
            for entry in removed:
                self.demand.discard(entry[2])
        return [entry[2] for entry in removed]

    def place_waiting(
        self, policy: PlacementPolicy, workers: Sequence[WorkerState], now_s: float
    ) -> list[tuple[Request, Decision]]:
        """Offer every waiting request, in order, to `policy`; admit those it places (so later
        ones see them) and keep the rest waiting. Returns the placements made."""
        placed: list[tuple[Request, Decision]] = []
        kept: list[tuple[float, int, Request]] = []
        while self._heap:
            entry = heapq.heappop(self._heap)
            decision = policy.decide(entry[2], workers, now_s)
            if decision.worker is None:
                kept.append(entry)
                continue
            decision.worker.admit(entry[2], now_s)
            self.demand.discard(entry[2])
            placed.append((entry[2], decision))
        self._heap = kept  # popped in order, so already a valid heap
        return placed
