"""How prefills interfere with decoding: the formulas the planner, feasibility and admission share.

vLLM (and the simulator) run waiting prompts before, or with chunked prefill inside, the
decoding batch's next iteration, so every prefill a worker runs stalls each request it is
decoding by about that prefill's time. Two views of that, used together:

- on average (`token_interval_s`): while a share rho of a worker's time goes to prefills, a
  decoding request gets a token every step / (1 - rho) seconds rather than every step. This is
  what long replies see, and what a worker must leave room for to keep taking prompts.
- per request (`stall_breaking_lengths`): a reply's ATGT is its decode time over its tokens, so
  one stall of s seconds adds s / (tokens - 1) to it. A 20-token reply on a worker admitting
  2k-token prompts sees each of their prefills as a large share of its budget; a 2,000-token
  reply does not notice it. Which replies a stall breaks depends on their length, which is not
  known while they run: placement weighs it with `placement.reply_lengths.ReplyLengths`.
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


def decode_slack_s(reply_tokens, step_s, budget_s):
    """The stall time a reply of `reply_tokens` tokens can absorb within an ATGT budget of
    `budget_s` per token when its tokens come every `step_s`: (tokens - 1) x (budget - step).
    Floats or numpy arrays alike."""
    return (reply_tokens - 1) * (budget_s - step_s)


def stall_breaking_lengths(
    elapsed_s: float, decoded: int, step_s: float, budget_s: float, stall_s: float
) -> tuple[float, float]:
    """The reply lengths (total output tokens) whose ATGT budget one more stall of `stall_s`
    breaks: those L with lo <= L < hi meet `budget_s` (s per token) without it and miss with it,
    for a request that has decoded `decoded` tokens after its first in `elapsed_s` since it and
    decodes the rest at `step_s` per token.

    A reply of L tokens meets its budget when the stalls it has met, elapsed - decoded x step
    (+ the new one), fit its `decode_slack_s`; solving for L gives the bounds. Where the budget
    is not above the step every length misses anyway: nothing more to break, (inf, inf)."""
    slack_per_token = decode_slack_s(2, step_s, budget_s)  # per token after the first
    if slack_per_token <= 0:
        return math.inf, math.inf
    behind = (elapsed_s - decoded * step_s) / slack_per_token
    return 1.0 + max(behind, 0.0), 1.0 + max(behind + stall_s / slack_per_token, 0.0)
