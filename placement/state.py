"""Requests and workers as placement sees them.

Every resident request of a worker gains one token per decode step, so a worker keeps one
step counter (`steps`) instead of touching each request per step: a request's generated
count is `steps - steps_at_admit` once its decode has started. Aggregates used by feasibility
(batch size, context tokens, queued prefill work) are maintained incrementally, so the policy
and the simulator never loop over residents to read them.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

from placement.prefix_cache import Prefix, PrefixCache, hit_tokens
from predictors.latency.profile import WorkerProfile

# Time constant of a worker's prefill-load estimate. Short, so the estimate follows bursts of
# arrivals: on the Azure conversation trace (4,000 requests, 8 workers) attainment was 0.996
# at 3 s, 0.993 at 5 s, 0.986 at 10 s and 0.979 at 20 s (see BENCHMARKS.md).
PREFILL_WINDOW_S = 3.0


@dataclass(slots=True)
class Request:
    """One request: its lengths (input known, output predicted) and its SLOs.

    `pred_mean` and `pred_upper` (the p90) are the predictor's output lengths at arrival;
    error-aware rebalancing may later raise `est_upper` / `est_mean` for a request that
    outlives its prediction. `output_len` is the true length, known only to the simulator.
    `prefix` names the prompt's whole leading blocks for prefix caching (None: not tracked).
    `sequences` is how many samples it asks for (OpenAI's `n`): the engine runs each as a
    sequence of its own, with its own prefill of the prompt, KV and decode slot, so every
    per-sequence count here (lengths, estimates, generated tokens) is multiplied by it where
    a worker's load is summed (prompt blocks the samples could share are not discounted: an
    upper bound).
    """

    id: str
    arrival_s: float
    input_len: int
    pred_mean: float
    pred_upper: float
    slo_ttft_s: float
    slo_atgt_s: float
    output_len: int | None = None
    prefix: Prefix | None = None
    sequences: int = 1
    est_mean: float = field(init=False)
    est_upper: float = field(init=False)

    def __post_init__(self) -> None:
        if self.input_len < 1:
            raise ValueError("input_len must be >= 1")
        if self.sequences < 1:
            raise ValueError("sequences must be >= 1")
        if self.prefix is not None:
            self.prefix = self.prefix.whole(self.input_len)
        if not 0 < self.pred_mean <= self.pred_upper:
            raise ValueError("need 0 < pred_mean <= pred_upper")
        self.est_mean = self.pred_mean
        self.est_upper = self.pred_upper

    @property
    def ttft_deadline_s(self) -> float:
        return self.arrival_s + self.slo_ttft_s

    @property
    def upper_output_tokens(self) -> int:
        """Output tokens reserved for this request: the upper estimate, in whole tokens."""
        return max(1, math.ceil(self.est_upper))

    @property
    def upper_final_tokens(self) -> int:
        """KV tokens one of its sequences holds just before it finishes if its output is
        `upper_output_tokens`."""
        return self.input_len + self.upper_output_tokens

    @property
    def upper_final_tokens_all(self) -> int:
        """`upper_final_tokens` over all its sequences: what it adds to a worker's KV peak."""
        return self.sequences * self.upper_final_tokens

    @property
    def prompt_tokens_all(self) -> int:
        """Prompt tokens over all its sequences (each is prefilled and held on its own)."""
        return self.sequences * self.input_len


@dataclass(slots=True)
class Resident:
    """A request placed on a worker. `decode_from_step` is None until its prefill ran;
    `decode_started_s` is when its first token came out (what its ATGT is measured from)."""

    request: Request
    decode_from_step: int | None = None
    decode_started_s: float = 0.0
    # the request's upper_final_tokens (per sequence) as counted in WorkerState.final_context_tokens,
    # so removal subtracts what admission added even if the estimate changed in between
    counted_final_tokens: int = 0
    # prompt tokens its prefill skips (the prefix cache holds them), and tokens of its KV
    # another resident's blocks hold (not counted against the capacity for it again)
    cached_tokens: int = 0
    kv_discount_tokens: int = 0

    @property
    def counted_kv_final_tokens(self) -> int:
        """What it adds to `WorkerState.kv_final_tokens`: its sequences' final size less the
        shared part."""
        return self.counted_final_context_tokens - self.kv_discount_tokens

    @property
    def counted_final_context_tokens(self) -> int:
        """What it adds to `WorkerState.final_context_tokens`: its sequences' final size."""
        return self.request.sequences * self.counted_final_tokens


def _upper_end_step(resident: Resident) -> int:
    """The worker step at which a decoding resident has generated its upper estimate."""
    return resident.decode_from_step + resident.counted_final_tokens - resident.request.input_len


def decay(elapsed_s: float) -> float:
    """Weight left after `elapsed_s` in an exponentially decayed sum with PREFILL_WINDOW_S."""
    return math.exp(-elapsed_s / PREFILL_WINDOW_S)


class ChangeLog(list):
    """Workers that changed since their watcher last drained this list (see WorkerState.watch)."""


@dataclass(slots=True)
class WorkerState:
    """A worker's configuration and load. Mutated only through its methods."""

    id: str
    profile: WorkerProfile
    accepting: bool = True  # False while draining for scale-down
    # the engine's token budget per iteration with chunked prefill (None: prefill-first)
    token_budget: int | None = None
    # how much slower than the TTFT model its queue is going, measured on the requests waiting
    # in it (placement.closed_loop.ClosedLoop.queue_lateness; 1: as modelled)
    queue_lateness: float = 1.0
    steps: int = 0  # decode steps this worker has run
    residents: dict[str, Resident] = field(default_factory=dict)
    # the residents' sequences (a request asking for n samples runs n), queued or decoding
    resident_sequences: int = 0
    # prefill work placed but not yet run, over sequences: sum(l - cached), sum(l^2 - cached^2),
    # count
    queued_prefill_tokens: int = 0
    queued_prefill_sq: int = 0
    queued_prefill_count: int = 0
    # whole prompts of the requests still queued (their KV is allocated at prefill)
    queued_prompt_tokens: int = 0
    # decoding sequences: count and sum of (input_len - decode_from_step); context tokens of
    # the batch = decode_context_base + decode_count * steps
    decode_count: int = 0
    decode_context_base: int = 0
    # sum over residents of upper_final_tokens less their KV discounts: an upper bound of the
    # projected KV peak while no resident has outlived its upper estimate (step-independent,
    # so it needs no update on advance)
    kv_final_tokens: int = 0
    # the same without the discounts: the context the decoding batch reads at those sizes
    final_context_tokens: int = 0
    # sum over residents of kv_discount_tokens
    kv_discount_tokens: int = 0
    # what placement believes this worker's engine has cached (None: prefix caching not
    # modelled, every prompt is prefilled in full)
    prefix_cache: PrefixCache | None = None
    # exponentially decayed sum (time constant PREFILL_WINDOW_S) of the prefill seconds of the
    # requests admitted, as of prefill_load_at_s; see prefill_share
    prefill_load_s: float = 0.0
    prefill_load_at_s: float = 0.0
    # weak references to the ChangeLogs of policies that cache per-worker aggregates
    change_logs: list[weakref.ref[ChangeLog]] = field(default_factory=list, repr=False, compare=False)
    # multiset of the residents' ATGT SLOs (value -> count) and its cached minimum
    slo_atgt_counts: dict[float, int] = field(default_factory=dict)
    _min_slo_atgt_s: float | None = None
    # cached min over decoding residents of the step they reach their upper estimate (None:
    # recompute on next read)
    _min_upper_end_step: float | None = math.inf
    # cached `stall_exposure()` (None: recompute on next read; any change but `advance` resets it)
    _stall_exposure: tuple[list[tuple[Request, float]], list[Resident], float] | None = field(
        default=None, repr=False, compare=False)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.profile.kv.capacity_tokens

    @property
    def batch_size(self) -> int:
        return self.decode_count

    def watch(self, log: ChangeLog) -> None:
        """Append this worker to `log` on every later change except `advance` (which leaves
        every step-independent aggregate as it was). The log is held weakly."""
        self.change_logs.append(weakref.ref(log))

    def _changed(self) -> None:
        self._stall_exposure = None
        dead = False
        for ref in self.change_logs:
            log = ref()
            if log is None:
                dead = True
            else:
                log.append(self)
        if dead:
            self.change_logs = [ref for ref in self.change_logs if ref() is not None]

    def stall_exposure(self) -> tuple[list[tuple[Request, float]], list[Resident], float]:
        """What one more prefill stall meets here (placement.feasibility.stall_risk): the queued
        requests in admission order, each with the prefill seconds queued behind it; the
        decoding residents; and the prefill seconds of everything queued. Cached until the
        worker changes (the steps it advances do not move any of it)."""
        if self._stall_exposure is None:
            prefill_s = self.profile.prefill.uncached_time_s
            queued = [r for r in self.residents.values() if r.decode_from_step is None]
            behind: list[tuple[Request, float]] = []
            pending = 0.0
            for resident in reversed(queued):
                behind.append((resident.request, pending))
                pending += resident.request.sequences * prefill_s(resident.request.input_len, resident.cached_tokens)
            behind.reverse()
            decoding = [r for r in self.residents.values() if r.decode_from_step is not None]
            self._stall_exposure = (behind, decoding, pending)
        return self._stall_exposure

    @property
    def min_slo_atgt_s(self) -> float:
        """The tightest ATGT SLO among residents (inf if none)."""
        if self._min_slo_atgt_s is None:
            self._min_slo_atgt_s = min(self.slo_atgt_counts, default=math.inf)
        return self._min_slo_atgt_s

    @property
    def min_upper_end_step(self) -> float:
        """The step at which the first decoding resident reaches its upper output estimate
        (inf if none decodes). While `steps` has not passed it, no resident is overdue and
        `kv_final_tokens` bounds the projected KV use from above."""
        if self._min_upper_end_step is None:
            self._min_upper_end_step = min(
                (_upper_end_step(r) for r in self.residents.values() if r.decode_from_step is not None),
                default=math.inf,
            )
        return self._min_upper_end_step

    @property
    def kv_used_tokens(self) -> int:
        """KV tokens in use now: the decoding batch's context plus the prompts of queued
        requests (their KV is allocated at prefill; counted from admission), blocks shared
        between residents once."""
        return self.context_tokens + self.queued_prompt_tokens - self.kv_discount_tokens

    @property
    def context_tokens(self) -> int:
        """Tokens in the KV cache of the decoding batch (prompts plus generated tokens)."""
        return self.decode_context_base + self.decode_count * self.steps

    def ttft_s(self, input_len: int, profile: WorkerProfile | None = None, queued_itself: int = 0,
               cached_tokens: int = 0) -> float:
        """The TTFT a request of `input_len` tokens, `cached_tokens` of them in the prefix
        cache, sees here from now (`WorkerProfile.ttft_s` over the prefill queued ahead of it,
        with the engine's chunking, the engine part scaled by the queue's measured lateness), by
        `profile` (default this worker's). `queued_itself`: the request is already admitted,
        the last in the queue, with this many sequences."""
        ttft = self.model_ttft_s(input_len, profile, queued_itself, cached_tokens)
        if self.queue_lateness == 1.0:
            return ttft
        overhead = (profile or self.profile).serving_overhead_s
        return (ttft - overhead) * self.queue_lateness + overhead

    def model_ttft_s(self, input_len: int, profile: WorkerProfile | None = None, queued_itself: int = 0,
                     cached_tokens: int = 0) -> float:
        """`ttft_s` by the profile alone, without the queue's measured lateness."""
        profile = profile or self.profile
        tokens, squares, count = self.queued_prefill_tokens, self.queued_prefill_sq, self.queued_prefill_count
        if queued_itself:
            tokens -= queued_itself * (input_len - cached_tokens)
            squares -= queued_itself * (input_len * input_len - cached_tokens * cached_tokens)
            count -= queued_itself
        if self.token_budget is None:
            return profile.ttft_s(input_len, tokens, squares, count, cached_tokens=cached_tokens)
        # decoding requests take one token of each iteration's budget; the prompts ahead join
        # the decoding batch as they complete, so the step is taken halfway through them
        return profile.ttft_s(
            input_len, tokens, squares, count, chunk_tokens=self.token_budget - self.decode_count,
            step_s=self.queue_drain_step_s(profile, tokens, count), cached_tokens=cached_tokens,
        )

    def set_queue_lateness(self, lateness: float) -> None:
        """Scale the engine part of this worker's TTFT model by `lateness` (>= 1; changes of
        less than 2 % are ignored, so the policy's table is not refreshed on every report)."""
        lateness = max(1.0, lateness)
        if abs(lateness - self.queue_lateness) > 0.02 * self.queue_lateness or (lateness == 1.0) != (self.queue_lateness == 1.0):
            self.queue_lateness = lateness
            self._changed()

    def queue_drain_step_s(self, profile: WorkerProfile, queued_tokens: int, queued_prompts: int) -> float:
        """The decoding batch's step while the prompts queued ahead are prefilled: the batch
        with half of them joined (they join as their prefill completes)."""
        return profile.decode_step_s(self.decode_count + queued_prompts / 2, self.context_tokens + queued_tokens / 2)

    def set_profile(self, profile: WorkerProfile) -> None:
        """Read this worker through another profile (its corrected one): the same KV capacity,
        other latencies. The prefill load already counted keeps the times it was admitted with."""
        if profile is not self.profile:
            if profile.kv.capacity_tokens != self.profile.kv.capacity_tokens:
                raise ValueError("a corrected profile must keep the worker's KV capacity")
            self.profile = profile
            self._changed()

    def prefill_share(self, now_s: float, extra_prefill_s: float = 0.0) -> float:
        """Estimated share of this worker's time that goes to prefills around `now_s`: the
        decayed sum of the prefill seconds admitted (plus `extra_prefill_s`, e.g. a newcomer's)
        over the window. For a steady stream of arrivals at rate lam it averages lam E[prefill],
        the planner's rho."""
        return (self.prefill_load_s * decay(now_s - self.prefill_load_at_s) + extra_prefill_s) / PREFILL_WINDOW_S

    def prefill_share_placing(self, now_s: float, own_prefill_s: float) -> float:
        """The prefill share a newcomer with a prefill of `own_prefill_s` is checked against
        here: its prefill counts only beside residents, whose decoding it stalls. It runs before
        its own first token, so it never stalls its own decode (on an idle worker, an 8k-token
        prompt's 1.4 s prefill counted against its own ATGT and had it refused on an idle
        worker: BENCHMARKS.md, "Prefix cache", run 8)."""
        return self.prefill_share(now_s, own_prefill_s if self.residents else 0.0)

    def generated(self, request_id: str) -> int:
        """Tokens generated so far by a resident request."""
        start = self.residents[request_id].decode_from_step
        return 0 if start is None else self.steps - start

    def prefix_hit(self, request: Request) -> tuple[int, int]:
        """(prompt tokens its prefill would skip here, tokens of its KV that residents' blocks
        already hold), by this worker's prefix cache; (0, 0) without one."""
        cache, prefix = self.prefix_cache, request.prefix
        if cache is None or prefix is None:
            return 0, 0
        matched = cache.match(prefix)
        if not matched:
            return 0, 0
        return hit_tokens(matched, prefix.block_tokens, request.input_len), cache.held_tokens(prefix, matched)

    def prefill_s(self, request: Request, cached_tokens: int = 0) -> float:
        """Its own prefills here (one a sequence), of the tokens the prefix cache does not hold."""
        return request.sequences * self.profile.prefill.uncached_time_s(request.input_len, cached_tokens)

    def admit(self, request: Request, now_s: float | None = None) -> None:
        """Place a request here at `now_s` (default: its arrival); its prefill is queued and
        counted in the prefill load. With a prefix cache, the part of its prompt cached here
        is neither prefilled nor counted twice in KV, and its blocks are cached from now on."""
        if request.id in self.residents:
            raise ValueError(f"request {request.id} is already on worker {self.id}")
        now_s = request.arrival_s if now_s is None else now_s
        cached, discount = self.prefix_hit(request)
        prefill_s = self.prefill_s(request, cached)
        if now_s >= self.prefill_load_at_s:
            self.prefill_load_s = self.prefill_load_s * decay(now_s - self.prefill_load_at_s) + prefill_s
            self.prefill_load_at_s = now_s
        else:  # admitted before the last update: its contribution has decayed since
            self.prefill_load_s += prefill_s * decay(self.prefill_load_at_s - now_s)
        resident = Resident(request, counted_final_tokens=request.upper_final_tokens, cached_tokens=cached,
                            kv_discount_tokens=discount)
        self.residents[request.id] = resident
        self.resident_sequences += request.sequences
        self._queue(resident, +1)
        self.kv_final_tokens += resident.counted_kv_final_tokens
        self.final_context_tokens += resident.counted_final_context_tokens
        self.kv_discount_tokens += discount
        if self.prefix_cache is not None and request.prefix is not None:
            self.prefix_cache.acquire(request.id, request.prefix)
            self._trim_prefix_cache()
        slo = request.slo_atgt_s
        self.slo_atgt_counts[slo] = self.slo_atgt_counts.get(slo, 0) + 1
        if self._min_slo_atgt_s is not None and slo < self._min_slo_atgt_s:
            self._min_slo_atgt_s = slo
        self._changed()

    def start_decode(self, request_id: str, now_s: float = 0.0) -> None:
        """Its prefill ran and produced the first token at `now_s`: it joins the decoding batch."""
        resident = self.residents[request_id]
        if resident.decode_from_step is not None:
            raise ValueError(f"request {request_id} is already decoding")
        resident.decode_started_s = now_s
        self._queue(resident, -1)
        resident.decode_from_step = self.steps
        sequences = resident.request.sequences
        self.decode_count += sequences
        self.decode_context_base += sequences * (resident.request.input_len - self.steps)
        if self._min_upper_end_step is not None:
            self._min_upper_end_step = min(self._min_upper_end_step, _upper_end_step(resident))
        self._changed()

    def _queue(self, resident: Resident, sign: int) -> None:
        """Add (+1) or take (-1) a resident's prompts to or from the queued prefill aggregates."""
        n, cached, sequences = resident.request.input_len, resident.cached_tokens, resident.request.sequences
        self.queued_prefill_tokens += sign * sequences * (n - cached)
        self.queued_prefill_sq += sign * sequences * (n * n - cached * cached)
        self.queued_prefill_count += sign * sequences
        self.queued_prompt_tokens += sign * sequences * n

    def advance(self, steps: int) -> None:
        """Every decoding request gained `steps` tokens."""
        if steps < 0:
            raise ValueError("steps must be >= 0")
        self.steps += steps
        if self.prefix_cache is not None:
            self._trim_prefix_cache()

    def _trim_prefix_cache(self) -> None:
        """Evict cached blocks no resident holds beyond the KV the residents leave free."""
        self.prefix_cache.trim(self.kv_capacity_tokens - self.kv_used_tokens)

    def remove(self, request_id: str) -> Request:
        """The request finished (or was cancelled): free its slot."""
        resident = self.residents.pop(request_id)
        sequences = resident.request.sequences
        self.resident_sequences -= sequences
        if resident.decode_from_step is None:
            self._queue(resident, -1)
        else:
            self.decode_count -= sequences
            self.decode_context_base -= sequences * (resident.request.input_len - resident.decode_from_step)
            if _upper_end_step(resident) == self._min_upper_end_step:
                self._min_upper_end_step = None
        self.kv_final_tokens -= resident.counted_kv_final_tokens
        self.final_context_tokens -= resident.counted_final_context_tokens
        self.kv_discount_tokens -= resident.kv_discount_tokens
        prefix = resident.request.prefix
        if self.prefix_cache is not None and prefix is not None:
            # blocks it owned that others hold now count for the next holder
            for heir, tokens in self.prefix_cache.release(request_id, prefix).items():
                self.residents[heir].kv_discount_tokens -= tokens
                self.kv_discount_tokens -= tokens
                self.kv_final_tokens += tokens
            self._trim_prefix_cache()
        slo = resident.request.slo_atgt_s
        left = self.slo_atgt_counts[slo] - 1
        if left:
            self.slo_atgt_counts[slo] = left
        else:
            del self.slo_atgt_counts[slo]
            if slo == self._min_slo_atgt_s:
                self._min_slo_atgt_s = None  # recomputed on next read
        self._changed()
        return resident.request

    def set_estimate(self, request_id: str, est_mean: float, est_upper: float) -> None:
        """Replace a resident's output-length estimates (error-aware rebalancing), keeping the
        KV aggregates consistent. Change a resident's estimates only through this method."""
        if not 0 < est_mean <= est_upper:
            raise ValueError("need 0 < est_mean <= est_upper")
        resident = self.residents[request_id]
        request = resident.request
        request.est_mean = est_mean
        request.est_upper = est_upper
        final = request.upper_final_tokens
        if resident.decode_from_step is not None and _upper_end_step(resident) == self._min_upper_end_step:
            self._min_upper_end_step = None
        grown = request.sequences * (final - resident.counted_final_tokens)
        self.kv_final_tokens += grown
        self.final_context_tokens += grown
        resident.counted_final_tokens = final
        if self._min_upper_end_step is not None and resident.decode_from_step is not None:
            self._min_upper_end_step = min(self._min_upper_end_step, _upper_end_step(resident))
        self._changed()
