"""Exact feasibility of placing one request on one worker (Aladdin's constraints).

Projection model (lockstep decoding): from now on every resident, including the new request
and those still waiting for their prefill, gains one token per decode step. A request asking
for n samples is n residents of the same lengths (`Request.sequences`). Resident i holds
c_i = input + generated tokens and ends after r_i = upper_output_tokens - generated more steps
(never negative: a request that already outlived its upper estimate is treated as finishing
now; rebalancing raises its estimate). At step t the worker holds

    usage(t) = sum over {i : r_i >= t} of (c_i + t)

which grows between finishes, so its peak is at one of the finish points t = r_k. The decode
step at t runs the n(t) = |{i : r_i >= t}| alive requests over usage(t) context tokens; it is
largest at a finish point too (n(t) only shrinks with t, the step time grows with both). With
prefix caching a request's blocks another resident already holds take no KV of their own:
the KV peak subtracts each alive request's discount d_i (the decode step still reads them).

A worker is feasible for request q under a `PackingBudget` (shares of the SLOs best fit packs
to, adapted from measured attainment; 1 = the SLOs themselves) when
  (a) KV:    max_t usage(t) <= KV capacity,
  (b) ATGT:  token_interval_s(max_t decode_step_s(n(t), usage(t)), rho) <= atgt_share x min SLO
             ATGT of residents and q, where rho is the worker's prefill share with q's prefill
             added when residents decode beside it (`WorkerState.prefill_share_placing`; q's
             own prefill comes before its own first token): prefills stall decode steps, so on
             average the time between tokens is the step stretched by 1 / (1 - rho), as in the
             planner,
  (c) stall: q's prefill is one more stall for every resident; the expected number of them it
             pushes over atgt_share x their ATGT SLO is at most the budget's `stall_risk`
             (`stall_risk` below: short replies are the ones a stall breaks),
  (d) TTFT:  (now - q.arrival) + ttft_s(q.input_len, queued prefill ahead of it) <= ttft_share
             x q.slo_ttft. Prefills have priority, so q waits for the prompts queued before it
             and at most the decode step running when it arrives (not counted: <= the ATGT SLO).
             Its own prefill skips what the worker's prefix cache holds (`WorkerState.prefix_hit`).
All latencies come from the worker's `WorkerProfile`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from placement.interference import stall_breaking_lengths, token_interval_s
from placement.packing_budget import PackingBudget
from placement.state import Request, WorkerState

# Packing to the SLOs themselves, stalls counted on average only.
NO_MARGIN = PackingBudget.fixed_shares(1.0)


@dataclass(frozen=True, slots=True)
class Projection:
    """Peak KV use (tokens) and peak decode-step time (s) of a worker's projected future."""

    peak_kv_tokens: int
    peak_step_s: float


@dataclass(frozen=True, slots=True)
class Fit:
    """The result of checking one worker for one request."""

    worker_id: str
    kv_ok: bool
    atgt_ok: bool
    ttft_ok: bool
    stall_ok: bool  # its prefill is unlikely to break a resident's ATGT SLO
    accepting: bool
    peak_kv_tokens: int
    kv_capacity_tokens: int
    peak_step_s: float
    prefill_share: float  # of the worker's time, with the request's own prefill beside residents
    atgt_s: float  # peak_step_s stretched by the prefills: the projected time between tokens
    atgt_slo_s: float  # the ATGT budget packed to: margin x the tightest SLO
    ttft_s: float
    ttft_slo_s: float  # the TTFT budget: its share x the request's SLO
    stall_breaks: float = 0.0  # expected residents whose ATGT SLO its prefill breaks

    @property
    def feasible(self) -> bool:
        return self.feasible_apart_from_ttft and self.ttft_ok

    @property
    def feasible_apart_from_ttft(self) -> bool:
        """Feasible if the TTFT SLO is dropped (for a request that can no longer meet it)."""
        return self.accepting and self.kv_ok and self.atgt_ok and self.stall_ok

    def shortfalls(self) -> list[str]:
        """Each test this fit failed, with its figures (what a refusal reports)."""
        out = [] if self.accepting else ["not accepting"]
        if not self.kv_ok:
            out.append(f"KV {self.peak_kv_tokens} > {self.kv_capacity_tokens} tokens")
        if not self.atgt_ok:
            out.append(f"ATGT {self.atgt_s * 1e3:.1f} > {self.atgt_slo_s * 1e3:.1f} ms")
        if not self.stall_ok:
            out.append(f"prefill stall breaks {self.stall_breaks:.2f} residents' ATGT")
        if not self.ttft_ok:
            out.append(f"TTFT {self.ttft_s * 1e3:.0f} > {self.ttft_slo_s * 1e3:.0f} ms")
        return out

    @property
    def kv_leftover(self) -> float:
        """Free KV at the projected peak, as a fraction of capacity (negative when over)."""
        return (self.kv_capacity_tokens - self.peak_kv_tokens) / self.kv_capacity_tokens

    @property
    def atgt_leftover(self) -> float:
        """Unused ATGT budget at the slowest projected step (prefills included), as a fraction
        of the SLO."""
        return (self.atgt_slo_s - self.atgt_s) / self.atgt_slo_s

    @property
    def violation(self) -> float:
        """The largest normalized shortfall over the three constraints (0 when feasible)."""
        ttft_over = (self.ttft_s - self.ttft_slo_s) / self.ttft_slo_s
        return max(0.0, -self.kv_leftover, -self.atgt_leftover, ttft_over)


def lifetimes(
    worker: WorkerState, new: Request | None = None, new_discount: int = 0
) -> list[tuple[int, int, int, int]]:
    """(remaining steps, current context tokens of one sequence, KV discount, sequences) of
    every resident, plus `new` (not yet placed; `new_discount`: its tokens residents' blocks
    hold here)."""
    steps = worker.steps
    out = []
    append = out.append
    for resident in worker.residents.values():
        start = resident.decode_from_step
        size = resident.request.input_len + (0 if start is None else steps - start)
        # counted_final_tokens is input + upper output tokens, kept in step by set_estimate
        remaining = resident.counted_final_tokens - size
        append((remaining if remaining > 0 else 0, size, resident.kv_discount_tokens, resident.request.sequences))
    if new is not None:
        append((new.upper_output_tokens, new.input_len, new_discount, new.sequences))
    return out


def project(worker: WorkerState, new: Request | None = None, new_discount: int = 0) -> Projection:
    """Peak KV use and peak decode-step time from now until every resident (and `new`, whose
    blocks residents hold for `new_discount` of its tokens) ends."""
    items = lifetimes(worker, new, new_discount)
    if not items:
        return Projection(0, 0.0)
    items.sort(reverse=True)
    # walk finish points from the last to the first: the alive set grows as t decreases
    points: list[tuple[int, int]] = []  # (alive count, usage) at each distinct finish point
    alive = 0
    held = 0
    shared = 0
    peak_kv = 0
    for k, (t, size, discount, sequences) in enumerate(items):
        alive += sequences
        held += sequences * size
        shared += discount
        if k + 1 == len(items) or items[k + 1][0] != t:
            usage = held + alive * t
            points.append((alive, usage))
            if usage - shared > peak_kv:
                peak_kv = usage - shared
    # only a point whose usage beats every earlier one (in time) can be the slowest step, since
    # earlier points run at least as many requests
    step_s = worker.profile.decode_step_s
    peak_step = 0.0
    best_usage = -1
    for alive, usage in reversed(points):
        if usage > best_usage:
            best_usage = usage
            step = step_s(alive, usage)
            if step > peak_step:
                peak_step = step
    return Projection(peak_kv, peak_step)


def stall_risk(worker: WorkerState, stall_s: float, step_s: float, now_s: float, budget: PackingBudget,
               step_hi_s: float | None = None, stop_above: float = math.inf) -> float:
    """Expected number of `worker`'s residents whose ATGT one more prefill stall of `stall_s`
    breaks, their decode running at `step_s` per token from now on and packed to
    `budget.atgt_share` x their SLO (`placement.interference.stall_breaking_lengths`, weighed by
    how likely each is to be that short: `budget.replies`). The stalls already committed count
    as spent: the prompts queued on the worker will be prefilled while a decoding resident
    waits for its next tokens, and after the first token of a resident still queued (which is
    counted as if it had just produced it) those queued behind it. 0 without a reply model.

    With `step_hi_s` (>= `step_s`): a lower bound of the risk at every step in [step_s,
    step_hi_s], counting only the lengths broken at all of them. Both ends of a resident's
    breaking lengths move one way as the step grows (the upper one up wherever the stall can
    break anything), so those are the lengths between the larger lower end and the upper end
    at `step_s`: a worker whose peak step is known only within a range can be rejected
    without projecting it.

    `stop_above`: the sum so far as soon as it exceeds this (a caller that only compares the
    risk with a limit need not walk the other residents; the terms are >= 0)."""
    replies = budget.replies
    if replies is None or not worker.residents:
        return 0.0
    share = budget.atgt_share
    steps = worker.steps
    # the queued prompts in admission order with the prefill time queued after each of them
    queued, decoding, pending = worker.stall_exposure()
    total = 0.0
    for request, behind in queued:
        lo, hi = stall_breaking_lengths(behind, 0, step_s, request.slo_atgt_s * share, stall_s)
        if step_hi_s is not None:
            lo, hi = _at_every_step(lo, hi, stall_breaking_lengths(behind, 0, step_hi_s, request.slo_atgt_s * share,
                                                                   stall_s)[0])
        if hi > 1.0:
            total += replies.p_end_between(request.pred_mean, 1.0, lo, hi)
            if total > stop_above:
                return total
    for resident in decoding:
        start = resident.decode_from_step
        request = resident.request
        budget_s = request.slo_atgt_s * share
        decoded = steps - start
        spent = now_s - resident.decode_started_s + pending
        # the slack it has banked: a stall within it breaks no length (its remaining tokens
        # come at the step, faster than the budget), and most residents are there
        if spent + stall_s <= decoded * budget_s:
            continue
        lo, hi = stall_breaking_lengths(spent, decoded, step_s, budget_s, stall_s)
        if step_hi_s is not None:
            lo, hi = _at_every_step(lo, hi, stall_breaking_lengths(spent, decoded, step_hi_s, budget_s, stall_s)[0])
        if hi > decoded + 1.0:
            total += replies.p_end_between(request.pred_mean, decoded + 1.0, lo, hi)
            if total > stop_above:
                return total
    return total


_ROUNDING_TOKENS = 1e-9  # keeps a bound's lengths inside the exact ones despite float rounding


def _at_every_step(lo: float, hi: float, lo_at_hi_step: float) -> tuple[float, float]:
    """The breaking lengths [lo, hi) at the low step narrowed to those broken at the high one
    too (its lower end `lo_at_hi_step`; inf where the stall breaks nothing there)."""
    return max(lo, lo_at_hi_step) + _ROUNDING_TOKENS, hi - _ROUNDING_TOKENS


def check(worker: WorkerState, request: Request, now_s: float, budget: PackingBudget | None = None,
          stall_limit: float | None = None) -> Fit:
    """Whether `request` fits on `worker` now, with the margins best-fit scoring needs, under
    `budget` (default: the SLOs themselves, stalls counted on average only): the projected time
    between tokens within `budget.atgt_share` x the tightest ATGT SLO (`Fit.atgt_slo_s`), the
    TTFT within `budget.ttft_share` x its SLO, and the request's prefill expected to break at
    most `stall_limit` (default `budget.stall_risk`) of the residents' ATGT SLOs."""
    budget = budget or NO_MARGIN
    cached, discount = worker.prefix_hit(request)
    projection = project(worker, request, discount)
    atgt_slo = min(worker.min_slo_atgt_s, request.slo_atgt_s) * budget.atgt_share
    ttft = (now_s - request.arrival_s) + worker.ttft_s(request.input_len, cached_tokens=cached)
    capacity = worker.kv_capacity_tokens
    own_prefill_s = worker.prefill_s(request, cached)
    prefill_share = worker.prefill_share_placing(now_s, own_prefill_s)
    atgt = token_interval_s(projection.peak_step_s, prefill_share)
    breaks = stall_risk(worker, own_prefill_s, projection.peak_step_s, now_s, budget)
    return Fit(
        worker_id=worker.id,
        kv_ok=projection.peak_kv_tokens <= capacity,
        atgt_ok=atgt <= atgt_slo,
        ttft_ok=ttft <= request.slo_ttft_s * budget.ttft_share,
        stall_ok=breaks <= (budget.stall_risk if stall_limit is None else stall_limit),
        accepting=worker.accepting,
        peak_kv_tokens=projection.peak_kv_tokens,
        kv_capacity_tokens=capacity,
        peak_step_s=projection.peak_step_s,
        prefill_share=prefill_share,
        atgt_s=atgt,
        atgt_slo_s=atgt_slo,
        ttft_s=ttft,
        ttft_slo_s=request.slo_ttft_s * budget.ttft_share,
        stall_breaks=breaks,
    )
