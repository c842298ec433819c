"""Iteration-level continuous batching on one worker, scheduled as vLLM does it.

Each iteration, waiting prompts go first (prefill priority): as many as fit the token budget,
the sequence limit and the free KV blocks run as one prefill batch, which emits each one's
next token (the first, for a new request). Otherwise the decoding batch runs a decode step,
one token per member. A member that needs a new KV block when none is free makes the engine
preempt the most recently admitted member (recompute: its blocks are freed and it re-queues
at the front, to prefill its prompt plus the tokens it had generated).

With chunked prefill (vLLM's v1 default) every iteration runs the decoding batch's step and
spends what is left of the token budget on prompt chunks, oldest first.

With prefix caching (`EngineOptions.prefix_caching`, vLLM's automatic prefix caching) the
engine keeps a `PrefixCache` of its blocks: a prompt's leading blocks found there are not
computed (its prefill starts after them) and, while another running request holds them, take
no free blocks; blocks are cached as chunks complete them and stay cached after their last
holder leaves, evicted least recently used first when an allocation needs the space.

Between two changes of the batch, decode steps are not simulated one by one: the batch is
fixed, every member gains a token per step and the decode step time is affine in context
tokens (the profile's form), so the time of k steps is an arithmetic series and the engine
jumps straight to the next completion or KV overflow. Work that arrives mid-run cuts the run
at the next step boundary (`interrupt`).

The engine does not own the clock: `start_next(now)` starts the next piece of work and
returns when it ends; the cluster calls `complete(now)` at that time.

The serving sim engine (serve_app/worker/sim_engine.py) drives this same scheduler on a real clock:
it caps decode runs at one step (`max_steps_per_run`) so that every iteration ends in
`complete`, where it streams that iteration's tokens, reads `load()` for the worker's stats
and drops requests whose client went away (`cancel`). The simulator uses none of these.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

from placement.latency_correction import EngineWork
from placement.prefix_cache import PrefixCache, hit_tokens
from placement.rebalance import SurvivalEstimator, on_progress
from placement.simulator.kv_blocks import LockstepBlocks
from placement.simulator.metrics import RequestRecord
from placement.state import WorkerState
from predictors.latency.profile import WorkerProfile, vllm_token_budget


@dataclass(frozen=True)
class EngineOptions:
    """vLLM scheduler settings the simulator models. The defaults are vLLM 0.32's (v1: chunked
    prefill on, its token budget by hardware); `chunked_prefill=False` models the older
    prefill-first scheduler."""

    max_num_seqs: int = 256
    # Tokens one iteration may process; None: vLLM's default for the hardware with chunked
    # prefill (predictors.latency.profile.vllm_token_budget), max(max_model_len, 2048) without
    # (vLLM v0's).
    max_batched_tokens: int | None = None
    chunked_prefill: bool = True
    # Free blocks a prefill must leave (vLLM v0 watermark, fraction of all blocks).
    watermark: float = 0.01
    # Longest run of decode steps started at once; None: up to the next completion or KV
    # overflow. 1 makes each decode step its own iteration, for a caller that acts per step.
    max_steps_per_run: int | None = None
    # vLLM's automatic prefix caching (on by default in vLLM; off here unless asked, so runs
    # without it reproduce the earlier results)
    prefix_caching: bool = False
    # How often the worker reports to placement (the live heartbeat, `placement.heartbeat_s`): a
    # finished request leaves placement's view at the next report, a multiple of this period
    # (0: at once, the simulator's exact view, so earlier results reproduce). What placement
    # admits is seen at once either way: it places it.
    report_period_s: float = 0.0

    def __post_init__(self) -> None:
        if self.report_period_s < 0:
            raise ValueError("report_period_s must be >= 0")

    def token_budget(self, profile: WorkerProfile) -> int:
        if self.max_batched_tokens is not None:
            return self.max_batched_tokens
        if not self.chunked_prefill:
            return max(profile.max_model_len, 2048)
        return vllm_token_budget(profile)

    def chunk_budget(self, profile: WorkerProfile) -> int | None:
        """The token budget a chunked iteration shares with the decoding batch; None without
        chunked prefill (what placement's TTFT model is told)."""
        return self.token_budget(profile) if self.chunked_prefill else None


def series_time(t0: float, dt: float, k: int) -> float:
    """Time of k decode steps whose first takes t0 and each next dt longer."""
    return k * t0 + dt * (k * (k - 1) // 2)


def steps_until(t0: float, dt: float, elapsed: float) -> int:
    """The fewest steps whose time reaches `elapsed` (the step boundary at or after it)."""
    if elapsed <= 0:
        return 0
    b = t0 - dt / 2
    j = math.ceil(elapsed / t0) if dt <= 1e-18 else math.ceil((-b + math.sqrt(b * b + 2 * dt * elapsed)) / dt)
    # the closed form may be off by one in floating point
    while j > 0 and series_time(t0, dt, j - 1) >= elapsed:
        j -= 1
    while series_time(t0, dt, j) < elapsed:
        j += 1
    return j


_IDLE, _PREFILL, _DECODE, _MIXED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """A worker's load as vLLM's scheduler reports it after scheduling an iteration."""

    running: int  # requests scheduled: being prefilled (chunks included) or decoding
    waiting: int  # requests queued for their (re)prefill or to join the batch
    kv_blocks_used: int  # blocks allocated, counting those for the tokens being computed


class WorkerEngine:
    """One worker's scheduler: waiting prompts, the decoding batch, KV blocks, preemption."""

    def __init__(
        self,
        state: WorkerState,
        options: EngineOptions = EngineOptions(),
        estimator: SurvivalEstimator | None = None,
        *,
        timing_profile: WorkerProfile | None = None,
        hand_off: bool = False,
    ):
        """`timing_profile` times the work when it differs from what placement reads in
        `state.profile` (a split-phase decode worker, or a host slower than its profile);
        `hand_off`: a split-phase prefill worker, which hands a request on after its prefill
        instead of decoding it."""
        profile = state.profile if timing_profile is None else timing_profile
        self.last_work: EngineWork | None = None  # what the work completed last was, for correction
        self._work = EngineWork()  # the current work's, so far (a decode run is counted as it syncs)
        self._run_context = 0  # context tokens of the current run's next decode step
        self.hand_off = hand_off
        self.handoffs: list[RequestRecord] = []  # prefilled, to be sent to a decode worker
        self.transferred: deque[RequestRecord] = deque()  # KV received, to join the batch
        self.busy_s = 0.0  # time spent running iterations
        self.estimator = estimator  # error-aware rebalancing; None: estimates never change
        self.state = state
        self.profile = profile
        self.options = options
        self.num_blocks = profile.kv.num_blocks
        self.block_size = profile.kv.block_size
        self.token_budget = options.token_budget(profile)
        self._watermark_blocks = int(options.watermark * self.num_blocks)
        self.waiting: deque[RequestRecord] = deque()
        self.running: dict[str, RequestRecord] = {}  # insertion order = admission order
        self.blocks = LockstepBlocks(self.block_size)
        self._block_keys: dict[str, int] = {}
        self._finish_step: dict[str, int] = {}
        self._finish_heap: list[tuple[int, str]] = []
        self._overrun_heap: list[tuple[int, str]] = []  # (step a resident passes est_mean, id)
        self._prefilled: dict[str, int] = {}  # chunked prefill: prompt tokens computed so far
        self._reserved_blocks = 0  # chunked prefill: blocks of prompts partly computed
        self.cache = PrefixCache() if options.prefix_caching else None
        self._cached: dict[str, int] = {}  # prompt tokens the current prefill of each request skips
        self._mode = _IDLE
        self._start_s = 0.0
        self._began_s = 0.0  # start of the current work (sync moves _start_s, not this)
        self._steps = 0
        self._t0 = 0.0
        self._dt = 0.0
        self._batch: list[RequestRecord] = []
        self.end_s = math.inf
        self.version = 0  # bumped when planned work changes, so stale end events are ignored
        self.preemptions = 0
        self._unreported: deque[tuple[float, str]] = deque()  # (report time, id) of finished requests

    @property
    def idle(self) -> bool:
        return self._mode == _IDLE

    @property
    def empty(self) -> bool:
        return not self.waiting and not self.running and not self.transferred and self._mode == _IDLE

    def enqueue(self, record: RequestRecord) -> None:
        """A request placed here (already admitted to `state` by the placement step): its
        prefill is queued."""
        self._check_fits(record)
        record.worker_id = self.state.id
        self.waiting.append(record)

    def enqueue_transferred(self, record: RequestRecord) -> None:
        """A prefilled request whose KV has arrived (split-phase decode worker; already
        admitted to `state`): it joins the decoding batch at the next step boundary."""
        self._check_fits(record)
        record.worker_id = self.state.id
        self.transferred.append(record)

    def take_handoffs(self) -> list[RequestRecord]:
        """The requests this (prefill) worker finished prefilling since the last call."""
        handoffs, self.handoffs = self.handoffs, []
        return handoffs

    def cancel(self, request_id: str) -> bool:
        """Drop a request between iterations (its client went away): it leaves the queue or
        the decoding batch and its KV blocks are freed. Returns False if it is not here (it
        finished). Only while idle: work in progress was planned with its members."""
        if self._mode != _IDLE:
            raise RuntimeError("cancel while busy")
        if request_id in self.running:
            record = self.running.pop(request_id)
            del self._finish_step[request_id]  # its finish-heap entry is now stale
            self.blocks.remove(self._block_keys.pop(request_id))
            self._release(record)
        elif not (self._drop_queued(self.waiting, request_id) or self._drop_queued(self.transferred, request_id)):
            return False
        self.state.remove(request_id)
        return True

    def _drop_queued(self, queue: deque[RequestRecord], request_id: str) -> bool:
        for record in queue:
            if record.request.id == request_id:
                queue.remove(record)
                if self._prefilled.pop(request_id, None) is not None:
                    # a prompt partly computed (chunked prefill) held all of its blocks
                    self._reserved_blocks -= self.profile.kv.blocks_for(self._prompt(record))
                self._release(record)
                return True
        return False

    def load(self) -> EngineLoad:
        """Running and waiting requests and KV blocks in use for the work in progress."""
        partial = len(self._prefilled)  # scheduled chunks, still in `waiting` until complete
        stepping = self._mode in (_DECODE, _MIXED) and self._steps > 0
        blocks = self.blocks.blocks_at(self.state.steps + (1 if stepping else 0)) + self._reserved_blocks
        blocks += sum(self.profile.kv.blocks_for(self._prompt(r)) for r in self._batch) - self._shared_blocks()
        return EngineLoad(
            running=len(self.running) + len(self._batch) + partial,
            waiting=len(self.waiting) - partial + len(self.transferred),
            kv_blocks_used=blocks,
        )

    def _check_fits(self, record: RequestRecord) -> None:
        blocks_needed = self.profile.kv.blocks_for(record.request.input_len + record.output_len)
        if blocks_needed > self.num_blocks - self._watermark_blocks:
            raise ValueError(f"request {record.request.id} needs {blocks_needed} KV blocks; worker holds {self.num_blocks}")

    def interrupt(self, now: float) -> float | None:
        """New work arrived: cut a decode run at the next step boundary so the scheduler can
        consider it. Returns the new end time, or None if the planned end stands."""
        if self._mode != _DECODE:
            return None
        j = steps_until(self._t0, self._dt, now - self._start_s)
        if j >= self._steps:
            return None
        self._steps = j
        self.end_s = self._start_s + series_time(self._t0, self._dt, j)
        self.version += 1
        return self.end_s

    @property
    def next_report_s(self) -> float | None:
        """When the next report takes finished requests out of placement's view (None: none left)."""
        return self._unreported[0][0] if self._unreported else None

    def _leave_view(self, request_id: str, now: float) -> None:
        """A request finished: out of placement's view at once, or at the next report."""
        period = self.options.report_period_s
        if not period:
            self.state.remove(request_id)
            return
        self._unreported.append(((math.floor(now / period) + 1) * period, request_id))

    def _report(self, now: float) -> None:
        while self._unreported and self._unreported[0][0] <= now:
            self.state.remove(self._unreported.popleft()[1])

    def sync(self, now: float) -> None:
        """Count the decode steps of the current run completed by `now` into `state`, so a
        policy reading it sees the batch as it is (the run's end does not change), and take
        out of it the finished requests reported by `now`."""
        self._report(now)
        if self._mode != _DECODE:
            return
        j = steps_until(self._t0, self._dt, now - self._start_s)
        if series_time(self._t0, self._dt, j) > now - self._start_s:
            j -= 1  # that step is still running
        if j <= 0:
            return
        j = min(j, self._steps)
        self._start_s += series_time(self._t0, self._dt, j)
        self._t0 += j * self._dt
        self._steps -= j
        self._count_decode_steps(j)
        self.state.advance(j)
        if self.estimator is not None:
            self._raise_overrun_estimates()

    def _count_decode_steps(self, k: int) -> None:
        """k decode steps of the current run ran: each holds every member's context, which
        grows by the batch size per step."""
        if k <= 0:
            return
        batch = self.blocks.count
        context = k * self._run_context + batch * (k * (k - 1) // 2)
        self._work += EngineWork(decode_iterations=k, decode_sequences=k * batch, decode_context_tokens=context)
        self._run_context += k * batch

    def _raise_overrun_estimates(self) -> None:
        """Error-aware rebalancing for residents that passed their mean estimate."""
        heap = self._overrun_heap
        steps = self.state.steps
        while heap and heap[0][0] <= steps:
            _, rid = heapq.heappop(heap)
            if rid in self.running:
                on_progress(self.state, rid, self.estimator)
                self._push_overrun(rid)

    def _push_overrun(self, rid: str) -> None:
        start = self.state.residents[rid].decode_from_step
        due = start + max(1, math.ceil(self.state.residents[rid].request.est_mean))
        heapq.heappush(self._overrun_heap, (max(due, self.state.steps + 1), rid))

    # ---- completing work -------------------------------------------------------------

    def complete(self, now: float) -> list[RequestRecord]:
        """The work started last ended at `now`: apply it; returns the requests that finished."""
        finished: list[RequestRecord] = []
        mode, self._mode = self._mode, _IDLE
        self.busy_s += now - self._began_s
        if mode == _DECODE:
            self._count_decode_steps(self._steps)
        self.last_work = self._work + EngineWork(busy_s=now - self._began_s)
        self._work = EngineWork()
        if mode in (_DECODE, _MIXED):
            self.state.advance(self._steps)
            self._pop_finished(now, finished)
            if self.estimator is not None:
                self._raise_overrun_estimates()
        if mode in (_PREFILL, _MIXED):
            for record in self._batch:
                self._prefill_done(record, now, finished)
        self._batch = []
        return finished

    def _pop_finished(self, now: float, finished: list[RequestRecord]) -> None:
        steps = self.state.steps
        heap = self._finish_heap
        while heap and heap[0][0] <= steps:
            step, rid = heapq.heappop(heap)
            if self._finish_step.get(rid) != step:
                continue  # stale: the request was preempted after this was pushed
            record = self.running.pop(rid)
            del self._finish_step[rid]
            self.blocks.remove(self._block_keys.pop(rid))
            self._release(record)
            self._leave_view(rid, now)
            record.produced = record.output_len
            record.finish_s = now
            finished.append(record)

    def _prefill_done(self, record: RequestRecord, now: float, finished: list[RequestRecord]) -> None:
        rid = record.request.id
        prompt = record.request.input_len + record.produced  # recompute covers generated tokens
        record.produced += 1
        if math.isnan(record.first_token_s):
            record.first_token_s = now
        cached = self._cached.pop(rid, 0)
        if record.preemptions == 0:
            record.cached_tokens = cached
        if self.cache is not None and record.request.prefix is not None:
            self.cache.acquire(rid, record.request.prefix)  # its whole prompt is computed now
        if record.produced >= record.output_len:
            self._release(record)
            self._leave_view(rid, now)
            record.finish_s = now
            finished.append(record)
            return
        if self.hand_off:
            self._release(record)
            self.state.remove(rid)  # its KV leaves with it (see docs/simulator.md)
            self.handoffs.append(record)
            return
        self.state.start_decode(rid, record.first_token_s)
        self._join_batch(record, prompt)

    def _join_batch(self, record: RequestRecord, kv_tokens: int) -> None:
        """A request holding `kv_tokens` in KV (its next token not yet computed) joins the
        decoding batch at the current step."""
        rid = record.request.id
        steps = self.state.steps
        self.running[rid] = record
        self._block_keys[rid] = self.blocks.add(kv_tokens, steps)
        finish = steps + record.output_len - record.produced
        self._finish_step[rid] = finish
        heapq.heappush(self._finish_heap, (finish, rid))
        if self.estimator is not None:
            self._push_overrun(rid)

    # ---- starting work ---------------------------------------------------------------

    def start_next(self, now: float) -> float | None:
        """Start the next iteration (or run of decode steps); returns when it ends, None if
        there is nothing to do."""
        if self._mode != _IDLE:
            raise RuntimeError("start_next while busy")
        if self.transferred:
            self._join_transferred()
        if self.options.chunked_prefill:
            return self._start_mixed(now)
        batch = self._take_prefill_batch()
        if batch:
            # each prompt computed after its cached prefix, attending over all of it
            sizes = [(self._prompt(r), self._cached.get(r.request.id, 0)) for r in batch]
            tokens = sum(n - c for n, c in sizes)
            squares = sum(n * n - c * c for n, c in sizes)
            self._work = EngineWork(prefill_iterations=1, prefill_prompts=len(sizes), prefill_tokens=tokens,
                                    prefill_squared_tokens=squares)
            return self._begin(now, _PREFILL, self.profile.prefill.time_from_sums(tokens, squares, len(sizes)), batch)
        if not self.running:
            return None
        k = self._steps_before_overflow()
        while k == 0:
            self._preempt_latest(now)
            if not self.running:
                return self.start_next(now)
            k = self._steps_before_overflow()
        return self._begin_decode(now, k)

    def _join_transferred(self) -> None:
        """Transferred requests join the batch in arrival order while seats and free blocks
        last; a preempted request waiting for its recompute goes first, as in vLLM."""
        free = self._free_blocks()
        while self.transferred and not self.waiting and len(self.running) < self.options.max_num_seqs:
            record = self.transferred[0]
            kv_tokens = self._prompt(record) - 1  # the KV of every token before the next one
            need = self.profile.kv.blocks_for(kv_tokens)
            if need > free:
                break
            self.transferred.popleft()
            free -= need
            self.state.start_decode(record.request.id, record.first_token_s)
            self._join_batch(record, kv_tokens)

    def _prompt(self, record: RequestRecord) -> int:
        return record.request.input_len + record.produced

    def _free_blocks(self) -> int:
        return (
            self.num_blocks - self.blocks.blocks_at(self.state.steps) - self._reserved_blocks - self._watermark_blocks
            + self._shared_blocks()
        )

    def _shared_blocks(self) -> int:
        """Blocks the per-request counts above count more than once (held by several requests)."""
        return 0 if self.cache is None else self.cache.shared_excess_tokens // self.block_size

    def _lookup(self, record: RequestRecord, prompt: int) -> tuple[int, int]:
        """(prompt tokens the cache holds, blocks of them running requests hold) for a prompt
        about to be scheduled: the first are not computed, the second need no free block."""
        prefix = record.request.prefix
        if self.cache is None or prefix is None:
            return 0, 0
        matched = self.cache.match(prefix)
        if not matched:
            return 0, 0
        return hit_tokens(matched, prefix.block_tokens, prompt), self.cache.held_tokens(prefix, matched) // self.block_size

    def _claim(self, record: RequestRecord, cached: int, free_after: int) -> None:
        """The prompt is scheduled with `cached` tokens from the cache: it holds those blocks,
        and cached blocks no one holds give way to its new ones (`free_after` blocks left)."""
        self._cached[record.request.id] = cached
        if self.cache is None:
            return
        if cached:
            prefix = record.request.prefix
            self.cache.acquire(record.request.id, prefix, -(-cached // prefix.block_tokens))
        self.cache.trim(free_after * self.block_size)

    def _release(self, record: RequestRecord) -> None:
        """The request's blocks are freed (it finished, left or was preempted); cached ones stay."""
        self._cached.pop(record.request.id, None)
        if self.cache is not None and record.request.prefix is not None:
            self.cache.release(record.request.id, record.request.prefix)

    def _take_prefill_batch(self) -> list[RequestRecord]:
        free = self._free_blocks()
        seats = self.options.max_num_seqs - len(self.running)
        budget = self.token_budget
        batch: list[RequestRecord] = []
        for record in self.waiting:
            n = self._prompt(record)
            cached, held = self._lookup(record, n)
            need = self.profile.kv.blocks_for(n) - held
            if len(batch) >= seats or (batch and n - cached > budget) or need > free:
                break
            batch.append(record)
            budget -= n - cached
            free -= need
            self._claim(record, cached, free)
        for _ in batch:
            self.waiting.popleft()
        return batch

    def _next_finish_step(self) -> int:
        heap = self._finish_heap
        while self._finish_step.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0]

    def _steps_before_overflow(self) -> int:
        """Decode steps the batch can run before the next completion without a member
        finding no free block (a step from S to S+1 needs the blocks of step S+1)."""
        s = self.state.steps
        k = self._next_finish_step() - s
        blocks = self.blocks
        room = self.num_blocks + self._shared_blocks()  # shared blocks are counted per member
        now_blocks = blocks.blocks_at(s)
        # each member gains at most ceil(k / block_size) blocks in k steps
        if now_blocks + blocks.count * -(-k // self.block_size) <= room:
            return k
        lo, hi = 0, k  # blocks_at(s + lo) fits; find the largest such lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if blocks.blocks_at(s + mid) <= room:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _preempt_latest(self, now: float) -> None:
        rid = next(reversed(self.running))
        record = self.running.pop(rid)
        record.produced += self.state.generated(rid)
        record.preemptions += 1
        self.preemptions += 1
        del self._finish_step[rid]
        self.blocks.remove(self._block_keys.pop(rid))
        self._release(record)
        self.state.remove(rid)
        self.state.admit(record.request, now)  # it will be prefilled again
        self.waiting.appendleft(record)

    def _begin(self, now: float, mode: int, duration: float, batch: list[RequestRecord]) -> float:
        self._mode = mode
        self._batch = batch
        self._start_s = now
        self._began_s = now
        self.end_s = now + duration
        self.version += 1
        return self.end_s

    def _begin_decode(self, now: float, k: int) -> float:
        if self.options.max_steps_per_run is not None:
            k = min(k, self.options.max_steps_per_run)
        batch_size = self.blocks.count
        context = self.blocks.tokens_at(self.state.steps)
        t0 = self.profile.decode_step_s(batch_size, context)
        # the step time is affine in context tokens, which grow by batch_size per step
        self._dt = self.profile.decode_step_s(batch_size, context + batch_size) - t0
        self._t0 = t0
        self._steps = k
        self._run_context = context
        return self._begin(now, _DECODE, series_time(t0, self._dt, k), [])

    def _start_mixed(self, now: float) -> float | None:
        """Chunked prefill: one iteration of the decoding batch's step plus prompt chunks;
        with no prompt waiting, a run of decode steps as without chunking."""
        while self.running and self._steps_before_overflow() == 0:
            self._preempt_latest(now)
        if not self.waiting:
            return self._begin_decode(now, self._steps_before_overflow()) if self.running else None
        decode_time = 0.0
        if self.running:
            decode_time = self.profile.decode_step_s(self.blocks.count, self.blocks.tokens_at(self.state.steps))
        budget = self.token_budget - len(self.running)
        free = self._free_blocks()
        seats = self.options.max_num_seqs - len(self.running)
        chunk_tokens = 0
        chunk_sq = 0
        chunks = 0
        done: list[RequestRecord] = []
        for record in self.waiting:
            if budget <= 0 or chunks >= seats:
                break
            rid = record.request.id
            prompt = self._prompt(record)
            computed = self._prefilled.get(rid)
            if computed is None:
                # the whole prompt's blocks are taken when its first chunk is scheduled, but
                # for those running requests hold; its cached prefix is not computed
                computed, held = self._lookup(record, prompt)
                need = self.profile.kv.blocks_for(prompt) - held
                if need > free:
                    break
                free -= need
                self._reserved_blocks += need + held
                self._claim(record, computed, free)
            take = min(budget, prompt - computed)
            budget -= take
            chunks += 1
            chunk_tokens += take
            # attention of a chunk over the prompt's prefix: the squared-length term grows
            # from computed^2 to (computed + take)^2
            chunk_sq += (computed + take) ** 2 - computed**2
            if computed + take == prompt:
                self._prefilled.pop(rid, None)
                self._reserved_blocks -= self.profile.kv.blocks_for(prompt)
                done.append(record)
            else:
                self._prefilled[rid] = computed + take
                if self.cache is not None and record.request.prefix is not None:
                    # the blocks this chunk completed are cached for later prompts
                    self.cache.acquire(rid, record.request.prefix, (computed + take) // record.request.prefix.block_tokens)
        if not self.running and not chunks:
            return None
        for _ in done:
            self.waiting.popleft()
        prefill_time = self.profile.prefill.time_from_sums(chunk_tokens, chunk_sq, chunks)
        self._work = EngineWork(prefill_iterations=1 if chunks else 0, prefill_prompts=chunks,
                                prefill_tokens=chunk_tokens, prefill_squared_tokens=chunk_sq)
        if self.running:
            self._work += EngineWork(decode_iterations=1, decode_sequences=self.blocks.count,
                                     decode_context_tokens=self.blocks.tokens_at(self.state.steps))
        self._t0, self._dt, self._steps = decode_time, 0.0, 1 if self.running else 0
        return self._begin(now, _MIXED, decode_time + prefill_time, done)
