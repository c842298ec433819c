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


class PrefixAffinityPolicy(_Baseline):
    """Ray Serve LLM's `PrefixCacheAffinityRouter` rule (ray 2.60,
    `ray/llm/_internal/serve/routing_policies/prefix_aware/prefix_aware_router.py`), on prefix
    blocks instead of prompt text: if the workers' ongoing requests differ by more than
    `imbalanced_threshold`, power of two choices; otherwise the workers whose record of routed
    prompts matches the longest prefix of this one, if that match covers `match_rate_threshold`
    of the prompt, else the workers with the least prompt text routed to them ("smallest
    tenants"); among those, the one with the fewest ongoing requests. The record never evicts
    (the router's default, `do_eviction=False`) and knows nothing of the engines' caches, KV
    or SLOs. Defaults are the router's."""

    name = "prefix-affinity"

    def __init__(self, seed: int = 0, imbalanced_threshold: float = float("inf"),
                 match_rate_threshold: float = 0.1) -> None:
        self._rng = random.Random(seed)
        self._p2c = PowerOfTwoPolicy(seed)
        self.imbalanced_threshold = imbalanced_threshold
        self.match_rate_threshold = match_rate_threshold
        self._routed: dict[str, set[int]] = {}  # worker id -> prefix blocks routed to it
        self._tokens: dict[str, int] = {}  # worker id -> distinct prompt tokens routed to it

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        pool = _accepting(workers)
        if not pool:
            return None
        loads = [len(w.residents) for w in pool]
        if max(loads) - min(loads) > self.imbalanced_threshold:
            chosen = self._p2c.choose(request, pool, now_s)
        else:
            chosen = self._fewest_ongoing(self._prefix_candidates(request, pool))
        self._record(request, chosen)
        return chosen

    def _prefix_candidates(self, request: Request, pool: list[WorkerState]) -> list[WorkerState]:
        prefix = request.prefix
        matched = [0] * len(pool)
        if prefix is not None:
            for i, worker in enumerate(pool):
                routed = self._routed.get(worker.id, ())
                for h in prefix.hashes:
                    if h not in routed:
                        break
                    matched[i] += prefix.block_tokens
        best = max(matched)
        if best > 0 and best / request.input_len >= self.match_rate_threshold:
            return [w for w, m in zip(pool, matched) if m == best]
        smallest = min(self._tokens.get(w.id, 0) for w in pool)
        return [w for w in pool if self._tokens.get(w.id, 0) == smallest]

    def _fewest_ongoing(self, candidates: list[WorkerState]) -> WorkerState:
        fewest = min(len(w.residents) for w in candidates)
        return self._rng.choice([w for w in candidates if len(w.residents) == fewest])

    def _record(self, request: Request, worker: WorkerState) -> None:
        """Insert the prompt into the worker's record: its blocks, and the rest of its tokens
        as text no other prompt shares."""
        routed = self._routed.setdefault(worker.id, set())
        prefix = request.prefix
        added = request.input_len
        if prefix is not None:
            added -= prefix.tokens
            for h in prefix.hashes:
                if h not in routed:
                    routed.add(h)
                    added += prefix.block_tokens
        self._tokens[worker.id] = self._tokens.get(worker.id, 0) + added
