"""Baseline policies with the Aladdin policy's interface. They never make a request wait: each
places it on some accepting worker (None only when no worker accepts), as a load balancer in
front of engines that queue internally does."""

from __future__ import annotations

import random
from collections.abc import Sequence

from placement.policy import Decision
from placement.state import Request, WorkerState


def _accepting(workers: Sequence[WorkerState]) -> list[WorkerState]:
    return [w for w in workers if w.accepting]


class _Baseline:
    """A policy that tests nothing: whatever it picks it calls feasible."""

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        raise NotImplementedError

    def decide(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> Decision:
        worker = self.choose(request, workers, now_s)
        return Decision(worker, worker is not None)


class RoundRobinPolicy(_Baseline):
    """The next accepting worker after the previous choice, in list order."""

    name = "rr"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        n = len(workers)
        for k in range(n):
            worker = workers[(self._next + k) % n]
            if worker.accepting:
                self._next = (self._next + k + 1) % n
                return worker
        return None


class JoinShortestQueuePolicy(_Baseline):
    """The accepting worker with the fewest resident requests (earliest on ties)."""

    name = "jsq"

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        return min(_accepting(workers), key=lambda w: len(w.residents), default=None)


class PowerOfTwoPolicy(_Baseline):
    """Two accepting workers drawn at random, the one with fewer residents (Ray Serve's default)."""

    name = "p2c"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        pool = _accepting(workers)
        if len(pool) <= 1:
            return pool[0] if pool else None
        a, b = self._rng.sample(pool, 2)
        return b if len(b.residents) < len(a.residents) else a


class LeastKVLoadPolicy(_Baseline):
    """The accepting worker with the smallest fraction of its KV cache in use now."""

    name = "least-kv"

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        return min(_accepting(workers), key=lambda w: w.kv_used_tokens / w.kv_capacity_tokens, default=None)
