"""Closed-loop latency correction: each worker's profile, corrected online by what it did.

A profile (engine-profiled on an idle engine, composed from operator data, or fitted to served
requests) predicts how long a worker takes for its prefills and decode steps. A loaded host is
slower than an idle one, and one host is not another, so every worker reports what it did over
intervals of busy time (`BusyInterval`: the wall time, and what its base profile predicts for
the work done in it) and the correction fits, per worker,

    elapsed = decode_fixed_factor x decode_fixed_model_s + decode_batch_factor x decode_batch_model_s
              + prefill_factor x prefill_model_s

by least squares over the intervals with decaying memory, each interval weighted by its length
(up to MAX_WEIGHT_S) and down-weighted when its relative residual is an outlier (Huber, so one
stalled interval moves little). How long to remember is the loop's own choice: a host whose
speed drifts (the 2-core VM's engines share their cores with the client and Serve's proxy)
wants a short memory, a steady one a long memory that averages its noise out. Each worker
keeps one fit per memory in `MEMORIES_S` (busy seconds), judges each interval by each fit
before it learns from it, and uses the longest memory whose recent error is within
`SHORTER_GAIN` of the least (a shorter memory only when it is clearly better). The decode step
has two factors because a host's step does not grow with the batch as the profile's does (the CPU
engines' per-sequence cost under load is many times the idle profile's, their fixed cost a few
times): the fixed part (d0, per iteration) and the batch part (d1 per sequence, d2 per context
token). A weak prior resolves what the intervals do not show: it ties the three factors to each
other relative to their level, so one factor for the whole host is the answer until the
intervals tell the terms apart (intervals all at one batch size cannot separate the decode
parts; a term never exercised takes the host's level; a worker's first few intervals cannot
send one term to its bound while another takes the time, as a first live run did with prefill
at 1/50 and the batch part at 19). Factors stay within [1 / MAX_FACTOR, MAX_FACTOR]. Each
interval is judged before the fit learns from it: `relative_error` is the running mean of
|predicted - elapsed| / elapsed over the last ~ERROR_INTERVALS intervals, the loop's own error,
for the metrics and the benchmarks. The TTFT the ingress measures adds the serving path's latency
outside the engine (`observe_ttft`): a robust running mean of measured minus predicted TTFT,
added to the profile's `serving_overhead_s`.

`profile_for` gives the corrected `WorkerProfile` placement reads; the factors are rounded to a
grid of `GRID` (relative) so workers with close corrections share one profile object and a
worker's profile changes only when its correction has moved. Pure code: the live placement
controller feeds it from heartbeats and ingress measurements, the simulator from its engines.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import astuple, dataclass

import numpy as np

from predictors.latency.profile import WorkerProfile

# candidate memories: busy seconds after which an interval's weight has fallen to 1/e
MEMORIES_S = (3.0, 10.0, 30.0)
# the memories' errors are compared as running means over about this many intervals (~25 s
# at 0.25 s heartbeats): over fewer, noise alone makes a short memory look better on a steady host
CHOICE_INTERVALS = 100
SHORTER_GAIN = 0.9  # a shorter memory is used when its error is below this share of every longer one's
TIE_WEIGHT_S = 0.1  # ties the factors to each other, per unit of the intervals' squared relative noise
MIN_NOISE = 0.01  # noise below 1 % is not believed (exact intervals, as the simulator's, keep a tie)
HUBER_K = 3.0  # residuals beyond HUBER_K x the running scale are down-weighted
MAX_WEIGHT_S = 1.0  # one interval counts as at most this much busy time (a long stall is one event)
MAX_FACTOR = 50.0
ERROR_INTERVALS = 20  # the error shown is a running mean over about this many intervals
RECENT_INTERVALS = 32  # the last intervals kept as they came, for offline study of the fit
GRID = 0.02  # factors are rounded to steps of 2 % (in log space)
TTFT_MEMORY = 50  # the TTFT offset is a running mean over about this many requests


@dataclass(frozen=True, slots=True)
class BusyInterval:
    """A stretch of wall time a worker spent working, and what its base profile predicts for
    the decode steps (their fixed and their batch part) and the prefills it ran in it."""

    elapsed_s: float
    decode_fixed_model_s: float
    decode_batch_model_s: float
    prefill_model_s: float

    @property
    def decode_model_s(self) -> float:
        return self.decode_fixed_model_s + self.decode_batch_model_s


@dataclass(frozen=True)
class EngineWork:
    """What an engine did over some iterations, in the sums the profile's latency models are
    linear in: its busy time, and per kind of work the iterations, requests and tokens. A
    prefill iteration costs c0 + cp x prompts + c1 x tokens + c2 x squared tokens (chunks
    count as prompts), a decode iteration d0 + d1 x sequences + d2 x context tokens."""

    busy_s: float = 0.0
    prefill_iterations: int = 0
    prefill_prompts: int = 0
    prefill_tokens: int = 0
    prefill_squared_tokens: float = 0.0
    decode_iterations: int = 0
    decode_sequences: int = 0
    decode_context_tokens: int = 0

    def __add__(self, other: EngineWork) -> EngineWork:
        # field by field: engines add one per iteration, and dataclasses.astuple (a deep copy)
        # took 50-100 us of it
        return EngineWork(
            self.busy_s + other.busy_s, self.prefill_iterations + other.prefill_iterations,
            self.prefill_prompts + other.prefill_prompts, self.prefill_tokens + other.prefill_tokens,
            self.prefill_squared_tokens + other.prefill_squared_tokens,
            self.decode_iterations + other.decode_iterations, self.decode_sequences + other.decode_sequences,
            self.decode_context_tokens + other.decode_context_tokens,
        )

    def interval(self, profile: WorkerProfile) -> BusyInterval:
        """The busy time and what `profile` predicts for this work."""
        p, d = profile.prefill, profile.decode
        prefill_s = (p.c0_s * self.prefill_iterations + p.cp_s_per_prompt * self.prefill_prompts
                     + p.c1_s_per_token * self.prefill_tokens + p.c2_s_per_token_sq * self.prefill_squared_tokens)
        batch_s = d.d1_s_per_seq * self.decode_sequences + d.d2_s_per_context_token * self.decode_context_tokens
        return BusyInterval(self.busy_s, d.d0_s * self.decode_iterations, batch_s, prefill_s)


class DecayedFit:
    """The three factors fitted over a worker's intervals with one memory, and the running
    error of its predictions (each interval judged before the fit learns from it)."""

    def __init__(self, memory_s: float) -> None:
        self.memory_s = memory_s
        # normal equations of the relative fit (x / elapsed) . factors = 1, decayed (the terms
        # decode fixed f, decode batch b, prefill p): A_ff, A_fb, A_fp, A_bb, A_bp, A_pp, b_f, b_b, b_p
        self._sums = [0.0] * 9
        self._scale = 0.1  # running mean of |relative residual|, each clipped at the Huber limit
        self.factors = (1.0, 1.0, 1.0)  # decode fixed, decode batch, prefill
        self.error = 0.0  # running mean of |relative residual| over ~CHOICE_INTERVALS, before each update

    def observe(self, xf: float, xb: float, xp: float, elapsed_s: float, count: int) -> float:
        """Learn from an interval of `elapsed_s` whose model parts over it are `xf`, `xb`, `xp`
        (the `count`th interval): returns its relative residual before learning."""
        kf, kb, kp = self.factors
        residual = 1.0 - (xf * kf + xb * kb + xp * kp)
        self.error += (abs(residual) - self.error) / min(count, CHOICE_INTERVALS)
        limit = HUBER_K * self._scale
        busy_s = min(elapsed_s, MAX_WEIGHT_S)  # a long stall is one event: it weighs and ages as one
        weight = busy_s * min(1.0, limit / max(abs(residual), 1e-12))
        keep = math.exp(-busy_s / self.memory_s)
        terms = (xf * xf, xf * xb, xf * xp, xb * xb, xb * xp, xp * xp, xf, xb, xp)
        self._sums = [s * keep + weight * t for s, t in zip(self._sums, terms)]
        # the scale is robust too: an outlier moves it as if it were at the limit
        self._scale += (min(abs(residual), limit) - self._scale) * min(1.0, busy_s / self.memory_s)
        self._solve()
        return residual

    def _solve(self) -> None:
        aff, afb, afp, abb, abp, app, bf, bb, bp = self._sums
        # the prior: TIE_WEIGHT_S x scale^2 x ((f_i - f_j) / level)^2 for each pair of factors:
        # relative to their level as the intervals' evidence is (a factor of 20 is known to +-1
        # as one of 2 to +-0.1), and as strong against them as they are noisy (the sums are not
        # divided by the residuals' variance: noisy intervals say less). With any interval's
        # evidence of the level the system is positive definite.
        kf, kb, kp = self.factors
        noise = max(self._scale, MIN_NOISE)
        tie = TIE_WEIGHT_S * noise * noise
        tie_fb, tie_fp, tie_bp = tie / (kf * kb), tie / (kf * kp), tie / (kb * kp)
        aff += tie_fb + tie_fp
        abb += tie_fb + tie_bp
        app += tie_fp + tie_bp
        afb, afp, abp = afb - tie_fb, afp - tie_fp, abp - tie_bp
        # the symmetric 3x3 solved by its adjugate: cheaper by hand than through numpy
        cff, cfb, cfp = abb * app - abp * abp, afp * abp - afb * app, afb * abp - afp * abb
        cbb, cbp, cpp = aff * app - afp * afp, afb * afp - aff * abp, aff * abb - afb * afb
        det = aff * cff + afb * cfb + afp * cfp
        if det <= 0:
            return
        factors = [(cff * bf + cfb * bb + cfp * bp) / det, (cfb * bf + cbb * bb + cbp * bp) / det,
                   (cfp * bf + cbp * bb + cpp * bp) / det]
        if not all(1.0 / MAX_FACTOR <= k <= MAX_FACTOR for k in factors):
            factors = _bounded_solve([[aff, afb, afp], [afb, abb, abp], [afp, abp, app]], [bf, bb, bp])
        self.factors = (factors[0], factors[1], factors[2])


class WorkerCorrection:
    """One worker's factors (see the module docstring): a fit per candidate memory in
    `memories_s` (one memory: that memory always), and the fit in use."""

    def __init__(self, memories_s: tuple[float, ...] = MEMORIES_S) -> None:
        if not memories_s or min(memories_s) <= 0:
            raise ValueError("need at least one memory, each > 0 s")
        self.fits = [DecayedFit(m) for m in sorted(memories_s)]
        self._in_use = self.fits[-1]
        self.relative_error = 0.0  # recent mean of |predicted - elapsed| / elapsed, before each update
        self.ttft_offset_s = 0.0
        self._ttft_count = 0
        self._ttft_scale = 0.0  # running mean of |TTFT error|
        self.intervals = 0
        self.recent: deque[tuple[int, BusyInterval]] = deque(maxlen=RECENT_INTERVALS)  # (number, interval)

    def factors(self) -> tuple[float, float, float]:
        """The decode fixed, decode batch and prefill factors."""
        return self._in_use.factors

    @property
    def decode_fixed_factor(self) -> float:
        return self._in_use.factors[0]

    @property
    def decode_batch_factor(self) -> float:
        return self._in_use.factors[1]

    @property
    def prefill_factor(self) -> float:
        return self._in_use.factors[2]

    @property
    def memory_s(self) -> float:
        """The memory of the fit in use."""
        return self._in_use.memory_s

    def observe(self, interval: BusyInterval) -> None:
        elapsed = interval.elapsed_s
        model_f, model_b, model_p = interval.decode_fixed_model_s, interval.decode_batch_model_s, interval.prefill_model_s
        if elapsed <= 0 or max(model_f, model_b, model_p) <= 0:
            return
        xf, xb, xp = model_f / elapsed, model_b / elapsed, model_p / elapsed
        self.intervals += 1
        self.recent.append((self.intervals, interval))
        for fit in self.fits:
            residual = fit.observe(xf, xb, xp, elapsed, self.intervals)
            if fit is self._in_use:
                # what the model placement read got wrong, unclipped (shown, not fitted)
                self.relative_error += (abs(residual) - self.relative_error) / min(self.intervals, ERROR_INTERVALS)
        # the longest memory whose error is within the tolerance of the least: a shorter one
        # must be clearly better, or the comparison's noise would pick it on a steady host
        tolerated = min(fit.error for fit in self.fits) / SHORTER_GAIN
        self._in_use = max((fit for fit in self.fits if fit.error <= tolerated), key=lambda fit: fit.memory_s)

    def recent_rows(self) -> list[list[float]]:
        """The last intervals as [number, elapsed_s, decode_fixed_model_s, decode_batch_model_s,
        prefill_model_s] rows (a benchmark that samples them often enough has every interval)."""
        return [[n, *astuple(interval)] for n, interval in self.recent]

    def observe_ttft(self, error_s: float) -> None:
        """One request's measured TTFT minus what placement predicted with the corrected
        profile at the time: the offset moves towards a zero mean error (a running mean over
        the last ~TTFT_MEMORY requests; an error beyond HUBER_K running scales counts as that)."""
        self._ttft_count += 1
        rate = 1.0 / min(self._ttft_count, TTFT_MEMORY)
        if self._ttft_count > 1:
            limit = HUBER_K * max(self._ttft_scale, 1e-3)
            error_s = max(-limit, min(limit, error_s))
        self._ttft_scale += (abs(error_s) - self._ttft_scale) * rate
        self.ttft_offset_s += error_s * rate


def _bounded_solve(a: list[list[float]], b: list[float]) -> list[float]:
    """The least-squares factors within [1 / MAX_FACTOR, MAX_FACTOR]: a factor out of bounds is
    held at its bound and the others solved again given it (clipping each alone would leave
    the others fitted to the value it was clipped from)."""
    held: dict[int, float] = {}
    while True:
        free = [i for i in range(3) if i not in held]
        solved = dict(held)
        if free:
            rhs = [b[i] - sum(a[i][k] * v for k, v in held.items()) for i in free]
            # least squares, not solve: a term no interval exercised leaves the reduced system singular
            x = np.linalg.lstsq(np.array([[a[i][j] for j in free] for i in free]), np.array(rhs), rcond=None)[0]
            solved.update(zip(free, (float(v) for v in x)))
        out = {i: min(MAX_FACTOR, max(1.0 / MAX_FACTOR, v)) for i, v in solved.items()
               if i not in held and not 1.0 / MAX_FACTOR <= v <= MAX_FACTOR}
        if not out:
            return [solved[i] for i in range(3)]
        held.update(out)


def _grid(factor: float) -> float:
    return math.exp(round(math.log(factor) / GRID) * GRID)


def scaled_profile(base: WorkerProfile, *, decode_fixed_factor: float = 1.0, decode_batch_factor: float = 1.0,
                   prefill_factor: float = 1.0, ttft_offset_s: float = 0.0) -> WorkerProfile:
    """`base` with its decode step's fixed part (d0) and batch part (d1, d2) and its prefill
    times multiplied by the factors and the serving overhead moved by `ttft_offset_s` (never
    below 0)."""
    decode = base.decode.model_copy(update={
        "d0_s": base.decode.d0_s * decode_fixed_factor,
        "d1_s_per_seq": base.decode.d1_s_per_seq * decode_batch_factor,
        "d2_s_per_context_token": base.decode.d2_s_per_context_token * decode_batch_factor,
    })
    prefill = base.prefill.model_copy(update={
        "c0_s": base.prefill.c0_s * prefill_factor, "cp_s_per_prompt": base.prefill.cp_s_per_prompt * prefill_factor,
        "c1_s_per_token": base.prefill.c1_s_per_token * prefill_factor,
        "c2_s_per_token_sq": base.prefill.c2_s_per_token_sq * prefill_factor,
    })
    return base.model_copy(update={
        "decode": decode, "prefill": prefill,
        "serving_overhead_s": max(0.0, base.serving_overhead_s + ttft_offset_s),
    })


class LatencyCorrection:
    """The corrections of every worker and the corrected profiles placement reads."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerCorrection] = {}
        self._observed = 0  # intervals observed, over all workers
        self._fleet: tuple[WorkerProfile, int, WorkerProfile] | None = None  # base, at, fleet profile
        # (id(base), factors on the grid, offset) -> (base, corrected): the base is kept so its
        # id cannot be reused by another object while the entry lives
        self._profiles: dict[tuple[int, float, float, float, float], tuple[WorkerProfile, WorkerProfile]] = {}

    def of(self, worker_id: str) -> WorkerCorrection:
        correction = self.workers.get(worker_id)
        if correction is None:
            correction = self.workers[worker_id] = WorkerCorrection()
        return correction

    def observe(self, worker_id: str, interval: BusyInterval) -> None:
        self.of(worker_id).observe(interval)
        self._observed += 1

    def observe_ttft(self, worker_id: str, error_s: float) -> None:
        self.of(worker_id).observe_ttft(error_s)

    def forget(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)

    def fleet_profile(self, base: WorkerProfile) -> WorkerProfile:
        """`base` corrected by the median correction of the workers (for planning the fleet;
        `base` itself before any worker has reported). Recomputed once each worker has had about
        one more observation, so callers may ask for it on every decision."""
        cached = self._fleet
        if cached is not None and cached[0] is base and self._observed - cached[1] < max(len(self.workers), 16):
            return cached[2]
        corrections = [c for c in self.workers.values() if c.intervals]
        profile = base
        if corrections:
            median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
            fixed, batch, prefill = (_grid(median([c.factors()[i] for c in corrections])) for i in range(3))
            profile = scaled_profile(base, decode_fixed_factor=fixed, decode_batch_factor=batch,
                                     prefill_factor=prefill,
                                     ttft_offset_s=median([c.ttft_offset_s for c in corrections]))
        self._fleet = (base, self._observed, profile)
        return profile

    def profile_for(self, worker_id: str, base: WorkerProfile) -> WorkerProfile:
        """`base` corrected for this worker (`base` itself while its correction rounds to none)."""
        c = self.workers.get(worker_id)
        if c is None:
            return base
        fixed, batch, prefill = (_grid(f) for f in c.factors())
        key = (id(base), fixed, batch, prefill, round(c.ttft_offset_s, 3))
        if key[1:] == (1.0, 1.0, 1.0, 0.0):
            return base
        entry = self._profiles.get(key)
        if entry is None:
            if len(self._profiles) > 4096:  # bases come and go (KV resizes): keep the cache bounded
                self._profiles.clear()
            entry = self._profiles[key] = (base, scaled_profile(
                base, decode_fixed_factor=fixed, decode_batch_factor=batch, prefill_factor=prefill,
                ttft_offset_s=key[4]))
        return entry[1]
