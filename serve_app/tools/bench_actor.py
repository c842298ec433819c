"""`aladdin bench-actor`: an end-to-end probe of the placement actor through Ray.

The real `PlacementActor` (serve_app.scheduler.placement_actor), or K of them with
`--shards K` (each owning the workers whose id hashes to it), is driven as the Serve app drives
it, with no engines, through the same client as the ingress and router
(serve_app.scheduler.placement_shards):

- W simulated workers (`w0`..`w{W-1}`) each send a `WorkerReport` every `placement.heartbeat_s`,
  built by the worker's own bookkeeping (`HeartbeatReports`: deltas, in full every so often or
  when the actor asks, as serve_app/worker/worker.py sends them). A worker runs R background
  requests that generate `TOKENS_PER_PERIOD` tokens a period and, once done, are reported
  finished and replaced (so R stay running), and the requests placed on it, which run for
  `PLACED_LIFETIME_PERIODS` periods and finish: that briefly so the actor's residents stay near
  R + rate x lifetime / W instead of growing with the run (the mean per worker is in the
  result). Their predictions are drawn like any request's (the actor cannot know they end
  early). Each report carries the engine work its tokens took at the profile's speed (so the
  closed loop's correction runs, and stays at 1).
- C callers each make the calls of the ingress and the router for one request after another:
  with admission, `admit`, then `admission` when the verdict is "wait", then `place` only when
  the verdict named no worker (the router skips the actor for a request admitted to a worker);
  without, `place` with all W workers as candidates. As in the ingress and the router, the
  callers' concurrent `admit`s and `place`s are coalesced into `admit_many` / `place_many`
  calls (`CallCoalescer`; `--no-coalesce`: one call each). Finished placed requests' timings
  go to `observe` once a period, as the ingress batches them.
- `--workers-per-node N` > 1: the workers are grouped N to a node and each node's reports reach
  the actor as its heartbeat relay sends them (`placement.heartbeat_relay`: one
  `heartbeat_many` per node and tick, gathered as the relay gathers them: `tick_batcher`).
  The relays themselves run in this process here; in a cluster they run on the workers' nodes,
  so the actor's figures are what it would see there.
  Callers place one request after another as fast as the actor answers, which can be faster
  than W workers take requests within their SLOs (at small W): without admission the excess is
  placed anyway (`least_violation` in `actor_outcomes`); with admission it waits for room, so
  round trips include waits and the rate is the simulated cluster's, not the actor's.

Everything runs in the driver's asyncio loop (one process besides the actors); at a few
hundred workers, building the reports costs the driver some of the CPU it shares with the actor.
Each node (each worker, without relays) reports on its own phase of the period, as in a
cluster (`heartbeat_relay.tick_phase_s` of the node's name); the sweep is the time from sending
one node's reports to the last reply. `--in-phase`: every worker reports at the same instant,
the worst case (the sweep is then how long the actor takes to apply a whole period of reports,
and callers see it as a burst).

Measured after a warm-up: placements/s, the round trip of each request's whole sequence of
calls (p50, p99), the sweep (median, p99) and the actor process's CPU time per placement and
per wall second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from placement.evaluation.bench import INPUT_CV, INPUT_MEAN, OUTPUT_CV, OUTPUT_MEAN, UPPER_OVER_MEAN
from placement.latency_correction import EngineWork
from placement.live import RequestTiming, RunningRequest, WorkerReport
from predictors.latency.profile import WorkerProfile
from serve_app.scheduler.call_coalescer import CallCoalescer
from serve_app.scheduler.heartbeat_relay import next_tick_s, tick_batcher, tick_phase_s
from serve_app.scheduler.placement_shards import PlacementShards
from serve_app.worker.heartbeat_reports import HeartbeatReports

TOKENS_PER_PERIOD = 8  # decode tokens per request per heartbeat (~30 ms a token at 0.25 s)
PLACED_LIFETIME_PERIODS = 2  # reported running once with its first tokens, then finished
END_TIMEOUT_S = 60.0  # for the load to stop and each shard's final stats once the window is over


@dataclass(frozen=True)
class BenchActorOptions:
    """What to run: W workers x R running requests, C callers, K shards."""

    workers: int = 64
    running: int = 16
    callers: int = 16
    shards: int = 1
    admission: bool = False
    coalesce: bool = True  # callers' calls go through CallCoalescer, as the ingress's and router's do
    full_heartbeats: bool = False  # every report full (as before delta heartbeats), to compare
    workers_per_node: int = 1  # > 1: each node's reports reach the actor through its relay
    in_phase: bool = False  # every node reports at the same instant (else each on its own phase)
    duration_s: float = 10.0
    warmup_s: float = 2.0
    profile_family: str = "llama-2-7b-a100"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= self.workers:
            raise ValueError("need 1 <= shards <= workers")
        if self.workers < 1 or self.callers < 1 or self.running < 0 or self.workers_per_node < 1:
            raise ValueError("need workers >= 1, callers >= 1, running >= 0 and workers per node >= 1")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("need duration > 0 s and warm-up >= 0 s")

    def app_config(self) -> dict[str, Any]:
        """The serving config the actor is built from: aladdin on a GPU profile (KV is not the
        limit), SLO-aware admission on or off."""
        return {
            "engine.accelerator": "gpu", "engine.kv_cache_gib": None,
            "placement.policy": "aladdin", "placement.profile_family": self.profile_family,
            "placement.admission": self.admission, "placement.seed": self.seed, "placement.shards": self.shards,
            # the probe measures round trips however long: a caller must not give up and fall back
            "placement.actor_timeout_s": 600.0,
        }


@dataclass(frozen=True)
class BenchActorResult:
    """What a run measured (times in ms; None where nothing was measured)."""

    workers: int
    running: int
    callers: int
    shards: int
    admission: bool
    coalesce: bool
    full_heartbeats: bool
    workers_per_node: int
    in_phase: bool
    duration_s: float
    placements: int
    refused: int
    unplaced: int  # neither placed nor refused: the actor left the choice to Serve
    placements_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    heartbeat_sweep_ms: float | None
    heartbeat_sweep_p99_ms: float | None
    actor_cpu_ms_per_placement: float | None
    actor_cpu_share: float  # actor CPU seconds per wall second
    # the actor calls the callers' admissions and placements went in (coalesced: None without),
    # and those the heartbeats went in (one per report, or one per node and tick through relays)
    placement_calls_per_s: float | None
    requests_per_placement_call: float | None
    heartbeat_calls_per_s: float
    reports_per_heartbeat_call: float | None
    driver_cpu_share: float  # the same of this process (simulated workers and callers): near 1, it limits the run
    # requests running per worker (the actor's picture of a worker), and of them those a report
    # carried in full (the rest as token counts, in delta reports)
    mean_running_per_worker: float | None
    mean_sent_in_full_per_report: float | None
    placements_per_worker: dict[str, int]
    # the controller's count of each outcome over the whole run, warm-up included (placed,
    # least_violation: nothing was feasible; admitted, admitted_after_wait, refused)
    actor_outcomes: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line with the main figures."""
        return (
            f"{self.placements_per_s:.0f} placements/s ({self.placements} placed, {self.refused} refused) on "
            f"{self.workers} workers x {self.running} running, {self.callers} callers"
            f"{', admission' if self.admission else ''}{'' if self.coalesce else ', calls not coalesced'}"
            f"{', full heartbeats' if self.full_heartbeats else ''}"
            f"{f', relayed per {self.workers_per_node} workers' if self.workers_per_node > 1 else ''}"
            f"{', all reporting in phase' if self.in_phase else ''}: "
            f"round trip p50 {_ms(self.p50_ms)} p99 {_ms(self.p99_ms)}, "
            f"heartbeat sweep {_ms(self.heartbeat_sweep_ms)} (p99 {_ms(self.heartbeat_sweep_p99_ms)}), "
            f"actor CPU {_ms(self.actor_cpu_ms_per_placement)}/placement ({self.actor_cpu_share:.0%} of a core; "
            f"{self.heartbeat_calls_per_s:.0f} heartbeat calls/s"
            f"{f', {self.placement_calls_per_s:.0f} placement calls/s' if self.placement_calls_per_s is not None else ''}; "
            f"driver {self.driver_cpu_share:.0%})"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def percentile_ms(seconds: list[float], q: float) -> float | None:
    """The `q`th percentile of durations in seconds, in ms (None when there are none)."""
    return float(np.percentile(seconds, q) * 1e3) if seconds else None


@dataclass
class Tally:
    """What the run saw inside the measured window."""

    round_trips_s: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # placed, refused, unplaced
    placements_per_worker: Counter[str] = field(default_factory=Counter)
    sweeps_s: list[float] = field(default_factory=list)
    # per sweep, the mean over workers of requests running, and of those a report sent in full
    running: list[float] = field(default_factory=list)
    sent_in_full: list[float] = field(default_factory=list)

    def request(self, round_trip_s: float, worker_id: str | None, refused: bool) -> None:
        self.round_trips_s.append(round_trip_s)
        if refused:
            self.outcomes["refused"] += 1
        elif worker_id is None:
            self.outcomes["unplaced"] += 1
        else:
            self.outcomes["placed"] += 1
            self.placements_per_worker[worker_id] += 1

    def sweep(self, sweep_s: float, mean_running: float, mean_sent_in_full: float) -> None:
        self.sweeps_s.append(sweep_s)
        self.running.append(mean_running)
        self.sent_in_full.append(mean_sent_in_full)


@dataclass(frozen=True)
class CallCounts:
    """Actor calls over the measured window and what they carried."""

    placement_calls: int = 0  # coalesced admit_many / place_many
    placement_requests: int = 0
    heartbeat_calls: int = 0
    reports: int = 0

    def __sub__(self, other: CallCounts) -> CallCounts:
        return CallCounts(self.placement_calls - other.placement_calls,
                          self.placement_requests - other.placement_requests,
                          self.heartbeat_calls - other.heartbeat_calls, self.reports - other.reports)


def build_result(
    options: BenchActorOptions, tally: Tally, window_s: float, actor_cpu_s: float, driver_cpu_s: float,
    actor_outcomes: dict[str, int], calls: CallCounts = CallCounts(),
) -> BenchActorResult:
    """The result of a run from what it tallied over `window_s`, the CPU seconds the actor and
    the driver spent in it, the actor's own outcome counts and the calls it got."""
    placements = tally.outcomes["placed"]
    return BenchActorResult(
        workers=options.workers, running=options.running, callers=options.callers, shards=options.shards,
        admission=options.admission, coalesce=options.coalesce, full_heartbeats=options.full_heartbeats,
        workers_per_node=options.workers_per_node, in_phase=options.in_phase, duration_s=window_s,
        placements=placements, refused=tally.outcomes["refused"], unplaced=tally.outcomes["unplaced"],
        placements_per_s=placements / window_s,
        p50_ms=percentile_ms(tally.round_trips_s, 50), p99_ms=percentile_ms(tally.round_trips_s, 99),
        heartbeat_sweep_ms=percentile_ms(tally.sweeps_s, 50), heartbeat_sweep_p99_ms=percentile_ms(tally.sweeps_s, 99),
        actor_cpu_ms_per_placement=actor_cpu_s * 1e3 / placements if placements else None,
        actor_cpu_share=actor_cpu_s / window_s, driver_cpu_share=driver_cpu_s / window_s,
        placement_calls_per_s=calls.placement_calls / window_s if options.coalesce else None,
        requests_per_placement_call=(calls.placement_requests / calls.placement_calls
                                     if options.coalesce and calls.placement_calls else None),
        heartbeat_calls_per_s=calls.heartbeat_calls / window_s,
        reports_per_heartbeat_call=calls.reports / calls.heartbeat_calls if calls.heartbeat_calls else None,
        mean_running_per_worker=float(np.mean(tally.running)) if tally.running else None,
        mean_sent_in_full_per_report=float(np.mean(tally.sent_in_full)) if tally.sent_in_full else None,
        placements_per_worker=dict(sorted(tally.placements_per_worker.items())),
        actor_outcomes=actor_outcomes,
    )


class Workload:
    """New requests with ShareGPT-like lengths (bench-placement's) and the config's SLOs."""

    def __init__(self, rng: random.Random, slo_ttft_s: float, slo_atgt_s: float, max_model_len: int) -> None:
        self.rng = rng
        self.slo = (slo_ttft_s, slo_atgt_s)
        self.max_model_len = max_model_len

    def _lognormal(self, mean: float, cv: float) -> float:
        sigma2 = math.log1p(cv * cv)
        return self.rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))

    def output_len(self) -> int:
        return max(1, min(int(self._lognormal(OUTPUT_MEAN, OUTPUT_CV)), self.max_model_len // 2))

    def request(self, request_id: str, now_s: float, output_len: int | None = None) -> RunningRequest:
        """A request arriving now; its prediction is a draw of the length distribution (or
        `output_len`, when the request's own length is known)."""
        mean = float(output_len or self.output_len())
        input_len = max(1, min(int(self._lognormal(INPUT_MEAN, INPUT_CV)), self.max_model_len - int(mean)))
        return RunningRequest(request_id=request_id, arrival_s=now_s, input_len=input_len, pred_mean=mean,
                              pred_upper=mean * UPPER_OVER_MEAN, slo_ttft_s=self.slo[0], slo_atgt_s=self.slo[1])


@dataclass
class _Resident:
    request: RunningRequest
    output_len: int
    placed: bool  # placed by a caller (its timing is observed when it ends)
    generated: int = 0
    first_token_s: float | None = None


class SimulatedWorker:
    """A worker's heartbeats without an engine (see the module docstring), kept by the worker's
    own bookkeeping (`HeartbeatReports`: full or delta reports, as the real worker sends). Pure:
    no Ray."""

    def __init__(self, worker_id: str, running: int, workload: Workload, profile: WorkerProfile, now_s: float,
                 full_reports: bool = False) -> None:
        self.worker_id = worker_id
        self.full_reports = full_reports
        self.workload = workload
        self.profile = profile
        self.kv_capacity_tokens = profile.kv.num_blocks * profile.kv.block_size
        self._reports = HeartbeatReports(worker_id)
        self._residents: dict[str, _Resident] = {}
        self._started = 0
        for _ in range(running):  # part-way through, so they do not all finish together
            resident = self._background(now_s)
            resident.generated = int(workload.rng.random() * resident.output_len)
            if resident.generated:
                self._first_token(resident, now_s)

    @property
    def running(self) -> int:
        return len(self._residents)

    def _start(self, resident: _Resident) -> None:
        self._residents[resident.request.request_id] = resident
        self._reports.started(resident.request)

    def _first_token(self, resident: _Resident, now_s: float) -> None:
        resident.first_token_s = now_s
        self._reports.first_token(resident.request.request_id, now_s)

    def _background(self, now_s: float) -> _Resident:
        self._started += 1
        output_len = self.workload.output_len()
        resident = _Resident(self.workload.request(f"{self.worker_id}-b{self._started}", now_s, output_len),
                             output_len, placed=False)
        self._start(resident)
        return resident

    def accept(self, request: RunningRequest) -> None:
        """A caller placed `request` here: it runs from the next report on."""
        self._start(_Resident(request, PLACED_LIFETIME_PERIODS * TOKENS_PER_PERIOD, placed=True))

    def report(self, now_s: float) -> tuple[WorkerReport, list[RequestTiming]]:
        """One period on: every request generates its tokens; those done are finished (the
        background ones replaced). The heartbeat, and the timings of the placed ones done."""
        timings: list[RequestTiming] = []
        # the engine work's sums over the period, as one EngineWork at the end
        prompts = prompt_tokens = squared_tokens = sequences = context_tokens = 0
        for request_id, r in list(self._residents.items()):
            step = min(TOKENS_PER_PERIOD, r.output_len - r.generated)
            if r.generated == 0:
                prompts += 1
                prompt_tokens += r.request.input_len
                squared_tokens += r.request.input_len ** 2
                self._first_token(r, now_s)
            sequences += step
            context_tokens += step * (r.request.input_len + r.generated)
            r.generated += step
            if r.generated < r.output_len:
                continue
            del self._residents[request_id]
            self._reports.ended(request_id, r.generated)
            if r.placed:
                atgt_s = (now_s - r.first_token_s) / max(1, r.generated - 1)
                timings.append(RequestTiming(request_id, r.first_token_s - r.request.arrival_s, atgt_s, r.generated))
            else:
                self._background(now_s)
        work = EngineWork(
            prefill_iterations=min(1, prompts), prefill_prompts=prompts, prefill_tokens=prompt_tokens,
            prefill_squared_tokens=float(squared_tokens), decode_iterations=TOKENS_PER_PERIOD if sequences else 0,
            decode_sequences=sequences, decode_context_tokens=context_tokens,
        )
        interval = work.interval(self.profile)
        work = dataclasses.replace(work, busy_s=interval.decode_model_s + interval.prefill_model_s)
        generated = {rid: r.generated for rid, r in self._residents.items()}
        if self.full_reports:
            self._reports.failed()  # the next report is full
        report = self._reports.report(
            generated, work=work if work.busy_s > 0 else None, kv_capacity_tokens=self.kv_capacity_tokens,
            kv_used_tokens=sum(r.request.input_len + r.generated for r in self._residents.values()),
        )
        return report, timings

    def acknowledged(self, report: WorkerReport, reply: dict[str, Any]) -> None:
        """The actor applied `report`; its reply may ask for the next one in full."""
        self._reports.acknowledged(report, reply.get("full_report", False))


@dataclass
class _Run:
    """One run's shared state in the driver's loop."""

    shards: PlacementShards
    options: BenchActorOptions
    workers: dict[str, SimulatedWorker]
    workload: Workload
    heartbeat_s: float
    window: tuple[float, float]  # perf_counter bounds of the measured window
    tally: Tally = field(default_factory=Tally)
    relays: dict[tuple[int, int], CallCoalescer[WorkerReport, dict[str, Any]]] = field(default_factory=dict)
    direct_heartbeats: int = 0  # reports sent without a relay, one call each

    def measured(self, start: float, end: float) -> bool:
        return self.window[0] <= start and end <= self.window[1]

    def calls(self) -> CallCounts:
        """The actor calls sent so far."""
        placement_calls, placement_requests = self.shards.coalesced()
        relays = self.relays.values()
        return CallCounts(placement_calls, placement_requests,
                          self.direct_heartbeats + sum(r.calls for r in relays),
                          self.direct_heartbeats + sum(r.items for r in relays))

    async def heartbeat(self, index: int, report: WorkerReport) -> dict[str, Any]:
        """The reply to the `index`th worker's report: from its shard's actor, directly or
        through its node's relay (serve_app.scheduler.heartbeat_relay)."""
        shard = self.shards.of_worker(report.worker_id)
        actor = self.shards.actor(shard)
        if self.options.workers_per_node == 1:
            self.direct_heartbeats += 1
            return await actor.heartbeat.remote(report)
        node = index // self.options.workers_per_node
        relay = self.relays.get((node, shard))
        if relay is None:
            relay = self.relays[node, shard] = tick_batcher(
                lambda reports, actor=actor: actor.heartbeat_many.remote(reports), self.heartbeat_s)
        return await relay.call(report)


async def _route(run: _Run, request: RunningRequest) -> tuple[str | None, bool]:
    """The ingress's and the router's calls for one request (PlacementShards, as they make
    them): (worker, refused)."""
    if run.options.admission:
        shard, verdict = await run.shards.admit(request)
        if verdict is None:  # it waits: the actor answers when it leaves the queue
            verdict = await run.shards.actor(shard).admission.remote(request.request_id)
        if verdict.refused:
            return None, True
        if verdict.worker_id is not None:  # admitted_to: the router does not ask again
            return verdict.worker_id, False
    return await run.shards.place(request, list(run.workers)), False


async def _caller(run: _Run, index: int) -> None:
    for n in itertools.count():
        request = run.workload.request(f"c{index}-{n}", time.time())
        start = time.perf_counter()
        worker_id, refused = await _route(run, request)
        end = time.perf_counter()
        if run.measured(start, end):
            run.tally.request(end - start, worker_id, refused)
        worker = run.workers.get(worker_id) if worker_id is not None else None
        if worker is not None:
            worker.accept(request)


async def _heartbeats(run: _Run) -> None:
    """Every worker's reports, node by node on each node's phase (all at once `in_phase`), and
    the finished requests' timings once a period, as the ingress batches them."""
    period = run.heartbeat_s
    indexed = list(enumerate(run.workers.values()))
    if run.options.in_phase:
        nodes = [(0.0, indexed)]
    else:
        size = run.options.workers_per_node
        nodes = [(tick_phase_s(f"bench-node-{n}", period), indexed[n * size:(n + 1) * size])
                 for n in range(math.ceil(len(indexed) / size))]
    timings: list[RequestTiming] = []
    await asyncio.gather(_observe(run, timings), *(_node_heartbeats(run, phase_s, workers, timings)
                                                   for phase_s, workers in nodes))


async def _node_heartbeats(run: _Run, phase_s: float, workers: list[tuple[int, SimulatedWorker]],
                           timings: list[RequestTiming]) -> None:
    while True:
        now_s = time.time()
        await asyncio.sleep(next_tick_s(now_s, run.heartbeat_s, phase_s) - now_s)  # a late sweep skips a tick
        now_s = time.time()
        reports = []
        for _, worker in workers:
            report, done = worker.report(now_s)
            reports.append(report)
            timings += done
        running = sum(w.running for _, w in workers) / len(reports)
        start = time.perf_counter()
        replies = await asyncio.gather(*(run.heartbeat(i, r) for (i, _), r in zip(workers, reports, strict=True)))
        end = time.perf_counter()
        for (_, worker), report, reply in zip(workers, reports, replies, strict=True):
            worker.acknowledged(report, reply)
        if run.measured(start, end):
            run.tally.sweep(end - start, running, sum(len(r.running) for r in reports) / len(reports))


async def _observe(run: _Run, timings: list[RequestTiming]) -> None:
    while True:
        await asyncio.sleep(run.heartbeat_s)
        if timings:  # to every shard, as the ingress sends them
            batch = timings[:]
            timings.clear()
            await asyncio.gather(*(run.shards.actor(k).observe.remote(batch) for k in range(run.shards.count)))


async def _window(run: _Run, actor_pids: list[int]) -> tuple[float, float, CallCounts]:
    """CPU seconds (user + system) of the actors' processes (summed) and of this one over the
    measured window, and the actor calls sent in it."""
    import psutil

    processes = [psutil.Process(pid) for pid in actor_pids] + [psutil.Process()]
    await asyncio.sleep(run.window[0] - time.perf_counter())
    before, calls_before = [p.cpu_times() for p in processes], run.calls()
    await asyncio.sleep(run.window[1] - time.perf_counter())
    after, calls_after = [p.cpu_times() for p in processes], run.calls()
    used = [(a.user + a.system) - (b.user + b.system) for a, b in zip(after, before, strict=True)]
    return sum(used[:-1]), used[-1], calls_after - calls_before


async def _drive(shards: PlacementShards, pids: list[int], options: BenchActorOptions,
                 config: dict[str, Any]) -> BenchActorResult:
    from serve_app.config import AppConfig

    app = AppConfig.model_validate(config)
    profile = app.placement_profile()
    workload = Workload(random.Random(options.seed), app.slo.ttft_ms / 1e3, app.slo.atgt_ms / 1e3,
                        profile.max_model_len)
    now_s = time.time()
    workers = {f"w{i}": SimulatedWorker(f"w{i}", options.running, workload, profile, now_s, options.full_heartbeats)
               for i in range(options.workers)}
    start = time.perf_counter() + options.warmup_s
    run = _Run(shards, options, workers, workload, app.placement.heartbeat_s, (start, start + options.duration_s))
    window = asyncio.create_task(_window(run, pids))
    load = [asyncio.create_task(_heartbeats(run))] + [
        asyncio.create_task(_caller(run, i)) for i in range(options.callers)]
    done, _ = await asyncio.wait([window, *load], return_when=asyncio.FIRST_COMPLETED)
    for task in load:
        task.cancel()
    async with asyncio.timeout(END_TIMEOUT_S):  # a run that cannot end fails rather than hangs
        await asyncio.gather(*load, return_exceptions=True)
    for task in done:  # the load never ends by itself: one that did, failed
        task.result()
    outcomes: Counter[str] = Counter()
    for k in range(shards.count):
        async with asyncio.timeout(END_TIMEOUT_S):
            outcomes.update((await shards.actor(k).stats.remote())["outcomes"])
    actor_cpu_s, driver_cpu_s, calls = window.result()
    return build_result(options, run.tally, options.duration_s, actor_cpu_s, driver_cpu_s, dict(outcomes), calls)


def _process_id(_actor: object) -> int:
    return os.getpid()


def run_bench_actor(options: BenchActorOptions) -> BenchActorResult:
    """Run the probe (see the module docstring) on a fresh placement actor of a new app name,
    in the running Ray instance or a local one started (and stopped) for it."""
    import ray


    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    config = options.app_config()
    shards = PlacementShards(f"bench-actor-{uuid.uuid4().hex[:8]}", config, coalesce=options.coalesce)
    actors = [shards.actor(k) for k in range(shards.count)]
    try:
        pids = ray.get([actor.__ray_call__.remote(_process_id) for actor in actors])
        return asyncio.run(_drive(shards, pids, options, config))
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
