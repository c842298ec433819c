"""The `sim` engine: a worker backend that emits tokens on the schedule a fitted profile
predicts, with the vLLM worker's interface and stats, and no vLLM, torch or accelerator.

It lets tests scale to many workers on one machine with logical GPUs. Real vLLM stays the
default engine.

Schedule. The engine drives the simulator's own scheduler,
`placement.simulator.worker_engine.WorkerEngine`, on a real (or injected) clock, so the
trace-driven simulator and this engine share one model of a worker: iteration-level
continuous batching with prefill priority (or chunked prefill), vLLM's sequence and token
limits, KV blocks and recompute preemption, each iteration timed by the `WorkerProfile`
(`prefill_time_s`, `decode_step_s`). Rather than a second scheduler written from the same
formulas, three small hooks were added to `WorkerEngine`, none used by the simulator (whose
results they leave unchanged): `EngineOptions.max_steps_per_run=1` makes every decode step an
iteration of its own, so each ends in `complete()` and its tokens are streamed then (the
simulator jumps over runs of steps, which gives the same times up to float rounding);
`cancel()` drops a request whose client went away; `load()` gives running, waiting and
KV-block figures. An iteration in progress is never cut: arrivals and cancellations take
effect at the next iteration boundary, as in vLLM.

Time. The driver sleeps until each iteration's planned end, then completes it at that planned
time rather than at the time it woke, so the schedule is the profile's exactly and lateness of
the event loop delays delivery without accumulating into the schedule (a late loop catches
up). `clock` and `sleep` are injectable; tests use a fake clock.

Output lengths. With `ignore_eos` a request generates `max_tokens` tokens (finish "length").
Otherwise it also has a natural length, at which it ends with finish "stop" if that comes
first: log-normal with the mean and coefficient of variation of `LengthMix`'s outputs (near
the Azure conversation trace: mean 211 tokens, cv 1), rounded, at least 1 and at least
`min_tokens`, drawn from a generator seeded by the engine seed and the request id (the same
request id gets the same length on every worker and in every run). A request is also cut
("length") at `max_model_len`, as vLLM does. The text is `TOKEN_TEXT` per token (id `TOKEN_ID`);
stop strings and the other sampling settings do not change it. What only a model can give
(logprobs, structured outputs, logit bias, allowed tokens) and n > 1 are refused as invalid.

Stats. The engine writes vLLM's stat-logger figures into the worker's `EngineSnapshot`
(running, waiting, KV usage after each scheduling decision; KV blocks and block size at
start), so the worker's `stats()` reads them unchanged.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from placement.simulator.metrics import RequestRecord
from placement.simulator.worker_engine import EngineOptions, WorkerEngine
from placement.prefix_cache import Prefix, prefix_of
from placement.state import Request, WorkerState
from placement.traces import LengthMix
from predictors.latency.profile import KVCacheModel, WorkerProfile
from serve_app.worker.engine import InvalidRequest
from serve_app.worker.engine_snapshot import EngineSnapshot
from serve_app.worker.worker_protocol import GenerateChunk

TOKEN_TEXT = " tok"  # the text of every generated token
TOKEN_ID = 0  # and its id (a placeholder: the engine has no vocabulary)
_DEFAULT_MAX_TOKENS = 16  # vLLM's SamplingParams default




class SimEngineDeadError(RuntimeError):
    """The engine was shut down or its scheduler loop failed; like vLLM's EngineDeadError."""


@dataclass(slots=True)
class _Stream:
    """A request being served. Like vLLM's output collector it holds one pending delta: a
    consumer that falls behind gets the tokens of several iterations in one chunk."""

    finish_reason: str  # what its last chunk says
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # something new to take
    produced: int = 0  # tokens generated so far
    taken: int = 0  # tokens handed to the consumer
    done: bool = False
    error: SimEngineDeadError | None = None
    cached_tokens: int = 0  # of its prompt, taken from the prefix cache (known once done)


class SimEngine:
    """One simulated worker engine; host it on a single event loop (a Serve replica's)."""

    def __init__(
        self,
        profile: WorkerProfile,
        *,
        max_num_seqs: int,
        max_model_len: int,
        snapshot: EngineSnapshot,
        seed: int = 0,
        kv_capacity_tokens: int | None = None,
        block_size: int | None = None,
        chunked_prefill: bool = False,
        max_num_batched_tokens: int | None = None,
        prefix_caching: bool = False,
        output_lengths: LengthMix = LengthMix(),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """`profile` times prefills and decode steps. KV capacity (tokens) and block size
        default to the profile's; a capacity is rounded down to whole blocks. The vLLM
        scheduler settings are `max_num_seqs`, `max_model_len`, `chunked_prefill` and
        `max_num_batched_tokens` (None: the simulator's default budget), and `prefix_caching`
        (the simulator's model of vLLM's, prompts hashed at the block size). `output_lengths`
        gives the natural-length distribution (its output mean and cv). `sleep(seconds)` must
        wait until `clock()` has advanced by `seconds`."""
        if max_num_seqs < 1 or max_model_len < 2:
            raise ValueError("need max_num_seqs >= 1 and max_model_len >= 2")
        block_size = profile.kv.block_size if block_size is None else block_size
        capacity = profile.kv.capacity_tokens if kv_capacity_tokens is None else kv_capacity_tokens
        if block_size < 1 or capacity < 0:
            raise ValueError("need block_size >= 1 and kv_capacity_tokens >= 0")
        kv = KVCacheModel(
            block_size=block_size, num_blocks=capacity // block_size, bytes_per_token=profile.kv.bytes_per_token
        )
        profile = profile.model_copy(update={"kv": kv, "max_model_len": max_model_len})
        options = EngineOptions(
            max_num_seqs=max_num_seqs,
            max_batched_tokens=max_num_batched_tokens,
            chunked_prefill=chunked_prefill,
            max_steps_per_run=1,
            prefix_caching=prefix_caching,
        )
        self._engine = WorkerEngine(WorkerState(id="sim", profile=profile), options)
        # vLLM refuses to start when one max_model_len request cannot fit its KV cache
        usable = kv.num_blocks - int(options.watermark * kv.num_blocks)
        if kv.blocks_for(max_model_len) > usable:
            raise ValueError(
                f"KV cache of {kv.num_blocks} blocks x {block_size} tokens cannot hold one "
                f"request of max_model_len={max_model_len}"
            )
        self.max_model_len = max_model_len  # longest prompt + output accepted
        self._seed = seed
        sigma2 = math.log1p(output_lengths.output_cv**2)
        self._length_mu = math.log(output_lengths.output_mean) - sigma2 / 2  # so the mean is output_mean
        self._length_sigma = math.sqrt(sigma2)
        self._clock = clock
        self._sleep = sleep
        self._snapshot = snapshot
        snapshot.kv_blocks_total = kv.num_blocks
        snapshot.block_size = block_size
        self._streams: dict[str, _Stream] = {}
        self._cancelled: set[str] = set()  # left by their client, still in the scheduler
        self._wake = asyncio.Event()  # set on arrival; the driver waits on it when idle
        self._driver: asyncio.Task[None] | None = None  # started by the first request
        self._dead: SimEngineDeadError | None = None

    # ---- requests ---------------------------------------------------------------------

    async def generate(
        self, prompt_token_ids: list[int], sampling: dict[str, Any], request_id: str, cache_salt: str | None = None
    ) -> AsyncIterator[GenerateChunk]:
        """Stream the request's output as deltas; the last chunk carries the finish reason.

        `sampling` holds SamplingParams keyword arguments; those that do not change the
        schedule are checked and ignored, unknown ones ignored. Raises InvalidRequest (a
        ValueError) for invalid ones or a prompt that leaves no room in `max_model_len`,
        ValueError for a request id in use; SimEngineDeadError once the engine is dead. Leaving the iteration early (close
        or cancel) removes the request from the batch and frees its KV blocks."""
        if self._dead is not None:
            raise self._dead
        if request_id in self._streams or request_id in self._cancelled:
            raise ValueError(f"request id {request_id!r} is already in use")
        try:
            output_len, finish_reason = self._plan(len(prompt_token_ids), sampling, request_id)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        prefix = (prefix_of(prompt_token_ids, self._engine.block_size, cache_salt) if self._engine.cache is not None
                  else None)
        stream = self._admit(request_id, len(prompt_token_ids), output_len, finish_reason, prefix)
        try:
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                if stream.error is not None:
                    raise stream.error
                new, stream.taken = stream.produced - stream.taken, stream.produced
                done = stream.done  # read before yielding: the engine moves on meanwhile
                yield GenerateChunk(TOKEN_TEXT * new, [TOKEN_ID] * new, stream.finish_reason if done else None,
                                    cached_tokens=stream.cached_tokens if done else None)
                if done:
                    return
        finally:
            # the driver drops a stream when it finishes; one still here lost its client
            if self._streams.pop(request_id, None) is not None:
                self._cancelled.add(request_id)

    def natural_output_len(self, request_id: str) -> int:
        """The length at which this request would end by itself (before `min_tokens`)."""
        rng = random.Random(f"{self._seed}:{request_id}")  # str seeds hash stably across runs
        return max(1, round(rng.lognormvariate(self._length_mu, self._length_sigma)))

    def _plan(self, prompt_len: int, sampling: dict[str, Any], request_id: str) -> tuple[int, str]:
        """Check the request as vLLM would; returns its output length and finish reason."""
        room = self.max_model_len - prompt_len
        if prompt_len < 1 or room < 1:
            raise ValueError(f"prompt of {prompt_len} tokens: need 1 to {self.max_model_len - 1} tokens")
        max_tokens = sampling.get("max_tokens", _DEFAULT_MAX_TOKENS)
        if max_tokens is None:  # vLLM: the rest of the context
            max_tokens = room
        _check_int("max_tokens", max_tokens, low=1)
        min_tokens = sampling.get("min_tokens", 0)
        _check_int("min_tokens", min_tokens, low=0, high=max_tokens)
        _check_int("n", sampling.get("n", 1), low=1, high=1)
        # what only a real model can give is refused, never faked
        for name in ("logprobs", "prompt_logprobs", "structured_outputs", "logit_bias", "allowed_token_ids"):
            if sampling.get(name) is not None:
                raise ValueError(f"the sim engine has no model to compute {name}; use the vllm engine")
        _check_int("top_k", sampling.get("top_k", -1), low=-1)
        if sampling.get("seed") is not None:
            _check_int("seed", sampling["seed"])
        _check_float("temperature", sampling.get("temperature", 1.0), low=0.0)
        _check_float("top_p", sampling.get("top_p", 1.0), low=0.0, high=1.0, open_low=True)
        _check_float("presence_penalty", sampling.get("presence_penalty", 0.0), low=-2.0, high=2.0)
        _check_float("frequency_penalty", sampling.get("frequency_penalty", 0.0), low=-2.0, high=2.0)
        stop = sampling.get("stop")
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("stop must be a string or a list of strings")
        ignore_eos = sampling.get("ignore_eos", False)
        if not isinstance(ignore_eos, bool):
            raise ValueError("ignore_eos must be a boolean")
        limit = min(max_tokens, room)
        if ignore_eos:
            return limit, "length"
        natural = max(self.natural_output_len(request_id), min_tokens)
        # vLLM checks for the end of sequence before the length limit
        return (natural, "stop") if natural <= limit else (limit, "length")

    def _admit(self, request_id: str, prompt_len: int, output_len: int, finish_reason: str,
               prefix: Prefix | None) -> _Stream:
        now = self._clock()
        # placement fields are unused here: no estimator, and the engine reads true lengths
        request = Request(
            id=request_id,
            arrival_s=now,
            input_len=prompt_len,
            pred_mean=output_len,
            pred_upper=output_len,
            slo_ttft_s=math.inf,
            slo_atgt_s=math.inf,
            output_len=output_len,
            prefix=prefix,
        )
        self._engine.state.admit(request, now)
        self._engine.enqueue(RequestRecord(request, output_len))
        stream = _Stream(finish_reason)
        self._streams[request_id] = stream
        if self._driver is None:
            self._driver = asyncio.get_running_loop().create_task(self._drive())
            self._driver.add_done_callback(self._driver_done)
        self._wake.set()
        return stream

    # ---- the scheduler loop -----------------------------------------------------------

    async def _drive(self) -> None:
        """Run iterations back to back on the clock; wait for arrivals when there is no work."""
        engine = self._engine
        now = self._clock()
        while True:
            for request_id in self._cancelled:
                engine.cancel(request_id)
            self._cancelled.clear()
            started = self._clock()
            end = engine.start_next(now)
            self._record_load()
            if end is None:
                self._wake.clear()
                await self._wake.wait()
                now = self._clock()
                continue
            # sleep even when late (0 s), so a loop catching up still lets consumers run
            await self._sleep(max(0.0, end - self._clock()))
            self._emit(engine.complete(end))
            # the iteration's work, busy for as long as it really took on this host's event loop
            self._snapshot.work += replace(engine.last_work, busy_s=max(self._clock() - started, 0.0))
            now = end

    def _emit(self, finished: list[RequestRecord]) -> None:
        """Send each served request the tokens it gained in the iteration that just ended."""
        state = self._engine.state
        for record in finished:
            stream = self._streams.pop(record.request.id, None)
            if stream is not None:
                stream.produced = record.produced
                stream.cached_tokens = record.cached_tokens
                stream.done = True
                stream.ready.set()
        for rid, record in self._engine.running.items():
            stream = self._streams.get(rid)
            if stream is not None:
                produced = record.produced + state.generated(rid)
                if produced > stream.produced:
                    stream.produced = produced
                    stream.ready.set()

    def _record_load(self) -> None:
        """What vLLM's stat logger records after each scheduling step."""
        load = self._engine.load()
        snap = self._snapshot
        snap.running = load.running
        snap.waiting = load.waiting
        blocks = self._engine.num_blocks
        snap.kv_usage = load.kv_blocks_used / blocks if blocks else 0.0

    def _driver_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._fail(SimEngineDeadError(f"sim engine scheduler failed: {task.exception()!r}"))

    def _fail(self, error: SimEngineDeadError) -> None:
        """Mark the engine dead and end every open stream with `error`."""
        self._dead = error
        for stream in self._streams.values():
            stream.error = error
            stream.ready.set()
        self._streams.clear()

    # ---- lifecycle --------------------------------------------------------------------

    async def check_health(self) -> None:
        """Raise SimEngineDeadError if the engine was shut down or its loop failed."""
        if self._dead is not None:
            raise self._dead

    def shutdown(self) -> None:
        """Stop the scheduler; open streams and later calls raise SimEngineDeadError."""
        if self._dead is None:
            self._fail(SimEngineDeadError("sim engine shut down"))
        driver = self._driver
        # from __del__ the loop may already be closed, and a closed loop cannot cancel
        if driver is not None and not driver.done() and not driver.get_loop().is_closed():
            driver.cancel()


def _check_int(name: str, value: object, *, low: float = -math.inf, high: float = math.inf) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_float(name: str, value: object, *, low: float, high: float = math.inf, open_low: bool = False) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    # written so that NaN fails
    if not (low < value <= high if open_low else low <= value <= high):
        raise ValueError(f"{name} must be in {'(' if open_low else '['}{low}, {high}], got {value}")
