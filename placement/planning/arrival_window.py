"""The recent demand a scaler plans for: a sliding window of arrivals and their lengths.

Each arrival is counted with its prompt length and its output length: the true one once the
request finished, the predicted mean until then (a window of finished requests alone would see
only the short ones early on), and the part of its prompt placement expected the worker's
prefix cache to hold. A request asking for n samples counts as n arrivals of those lengths
(the engine runs n sequences). `workload` turns the window into the planner's `Workload`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from placement.packing_budget import DEFAULT_TARGET_ATTAINMENT
from placement.planning.planner import Workload


@dataclass
class _Arrival:
    arrival_s: float
    input_len: int
    output_len: float  # predicted mean until the request finishes, then the true length
    cached_tokens: int = 0  # of its prompt, expected from its worker's prefix cache
    sequences: int = 1


@dataclass
class ArrivalWindow:
    """Arrivals of the last `window_s` seconds (see the module docstring)."""

    window_s: float = 60.0
    started_s: float | None = None  # when the window began observing
    _arrivals: deque[_Arrival] = field(default_factory=deque)
    _by_id: dict[str, _Arrival] = field(default_factory=dict)
    _ids: deque[str] = field(default_factory=deque)
    _sequences: int = 0  # over the arrivals held

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError("window_s must be > 0")

    def add(self, request_id: str, arrival_s: float, input_len: int, pred_mean: float, sequences: int = 1) -> bool:
        """Count an arrival of `sequences` sequences (idempotent per request id); True if it
        was not counted yet."""
        if request_id in self._by_id:
            return False
        if self.started_s is None:
            self.started_s = arrival_s
        item = _Arrival(arrival_s, input_len, pred_mean, sequences=sequences)
        self._sequences += sequences
        self._arrivals.append(item)
        self._ids.append(request_id)
        self._by_id[request_id] = item
        return True

    def cached(self, request_id: str, tokens: int) -> None:
        """Placement expects `tokens` of the request's prompt from its worker's prefix cache."""
        item = self._by_id.get(request_id)
        if item is not None:
            item.cached_tokens = tokens

    def finish(self, request_id: str, output_len: int) -> None:
        """The request ended with `output_len` tokens over its sequences; use their mean
        instead of its prediction."""
        item = self._by_id.get(request_id)
        if item is not None and output_len > 0:
            item.output_len = output_len / item.sequences

    def expire(self, now_s: float) -> None:
        """Forget arrivals older than the window."""
        horizon = now_s - self.window_s
        while self._arrivals and self._arrivals[0].arrival_s < horizon:
            self._sequences -= self._arrivals.popleft().sequences
            self._by_id.pop(self._ids.popleft(), None)

    def __len__(self) -> int:
        """Arrivals held, a request of n sequences counting n."""
        return self._sequences

    def full(self, now_s: float) -> bool:
        """True once the window has observed a whole `window_s`: before that, a low rate may
        only mean it has not looked long enough, so scaling down must wait."""
        return self.started_s is not None and now_s - self.started_s >= self.window_s

    def rate_per_s(self, now_s: float) -> float:
        """Arrivals (sequences) per second over the window. While it is not full, the arrivals
        after the first over the time since it (the first only marks when observing began): one
        arrival says nothing of the rate, and a first heartbeat just after it must not read a
        burst."""
        self.expire(now_s)
        if not self._arrivals or self.started_s is None:
            return 0.0
        if self.full(now_s):
            return self._sequences / self.window_s
        span = now_s - self.started_s
        return (self._sequences - self._arrivals[0].sequences) / span if span > 0 else 0.0

    def workload(self, now_s: float, slo_ttft_s: float, slo_atgt_s: float,
                 target_attainment: float = DEFAULT_TARGET_ATTAINMENT) -> Workload | None:
        """The planner's view of the window (with the arrival times: how steady the rate is);
        None when it holds no arrival."""
        rate = self.rate_per_s(now_s)
        if rate <= 0:
            return None
        count = len(self._arrivals)
        repeats = None if self._sequences == count else np.fromiter(
            (a.sequences for a in self._arrivals), dtype=int, count=count)

        def column(values: Iterable[float], dtype: type) -> np.ndarray:
            """One value per arrival, repeated for each of its sequences."""
            array = np.fromiter(values, dtype=dtype, count=count)
            return array if repeats is None else np.repeat(array, repeats)
        return Workload(
            rate_per_s=rate,
            input_lens=column((a.input_len for a in self._arrivals), float),
            output_lens=column((a.output_len for a in self._arrivals), float),
            slo_ttft_s=slo_ttft_s,
            slo_atgt_s=slo_atgt_s,
            target_attainment=target_attainment,
            arrival_s=column((a.arrival_s for a in self._arrivals), float),
            cached_lens=column((a.cached_tokens for a in self._arrivals), int),
        )
