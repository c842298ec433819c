"""How long requests take to reach placement: from their arrival (the ingress's stamp, or a
front proxy's `X-Request-Start`) to the placement controller's first sight of them (admission,
or routing where nothing admits). That much of a request's TTFT budget is spent outside any
engine (HTTP, tokenization, the output-length prediction, the actor call) before placement
runs; the simulator places a request at its arrival. Kept over the most recent requests, for
operators (the controller's stats) and for replaying a run in the simulator (`aladdin
fidelity` places each replayed request the median later: `Scenario.placement_delay_s`).
"""

from __future__ import annotations

from collections import deque

import numpy as np

#: requests the quantiles are taken over (the newest)
RECENT_REQUESTS = 512


class PathDelay:
    """Arrival-to-placement delays of the most recent requests."""

    def __init__(self, recent: int = RECENT_REQUESTS) -> None:
        self._delays: deque[float] = deque(maxlen=recent)

    def observe(self, delay_s: float) -> None:
        """A request first seen `delay_s` after its arrival (clocks of two hosts may disagree
        by a little: a negative delay counts as none)."""
        self._delays.append(max(0.0, delay_s))

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the recent delays, s; None before any request."""
        return float(np.quantile(self._delays, q)) if self._delays else None

    def to_dict(self) -> dict[str, float | int | None]:
        return {"p50_s": self.quantile(0.5), "p90_s": self.quantile(0.9), "requests": len(self._delays)}
