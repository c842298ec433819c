"""How interleaved prefills stretch decoding: the one formula the planner and feasibility share.

vLLM (and the simulator) run waiting prompts before the decoding batch's next step, so while a
share rho of a worker's time goes to prefills, a decoding request gets a token every
step / (1 - rho) seconds on average rather than every step.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np


@overload
def token_interval_s(step_s: float, prefill_share: float) -> float: ...


@overload
def token_interval_s(step_s: float | np.ndarray, prefill_share: np.ndarray) -> np.ndarray: ...


def token_interval_s(step_s, prefill_share):
    """Average time between a decoding request's tokens: `step_s / (1 - prefill_share)`, inf
    when prefills take all of the worker's time. Elementwise for a numpy `prefill_share`."""
    if isinstance(prefill_share, np.ndarray):
        free = 1.0 - prefill_share
        return np.divide(step_s, free, out=np.full_like(free, np.inf), where=free > 0)
    return step_s / (1.0 - prefill_share) if prefill_share < 1.0 else math.inf
