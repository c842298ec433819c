"""Split-phase (disaggregated prefill/decode) serving on the simulator's cluster and engine.

P prefill workers and D decode workers. A request arrives at the prefill worker with the
smallest predicted TTFT (the least prefill work queued ahead of it), is prefilled there in
the engine's usual prefill batches and gets its first token at the end of its prefill (as
vLLM's disaggregated prefill does). The placement policy (e.g. Aladdin's KV/ATGT best fit)
then picks a decode worker, the prompt's KV crosses the link (`KVLink.transfer_s`) and the
request joins that worker's decoding batch at its next step boundary. Decode workers run no
prefill (except recomputing a request they preempted), so placement reads them through a
profile whose prefill costs nothing: no TTFT wait and no prefill share stretching their
decode steps. See docs/simulator.md, "Split-phase mode".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from placement.simulator.cluster import FIRST_EXTRA_EVENT, Cluster, SimResult, _Worker
from placement.simulator.metrics import RequestRecord, Summary, summarize
from placement.policy import Decision
from placement.simulator.scenario import Scenario, cluster_parts, sim_config
from placement.simulator.worker_engine import WorkerEngine
from placement.state import Request, WorkerState
from placement.traces import TraceRequest
from predictors.latency.profile import PrefillModel, WorkerProfile

_TRANSFER_DONE = FIRST_EXTRA_EVENT

# 200 Gb/s (25 GB/s): one HDR InfiniBand / 200 GbE NIC per worker, a common inter-node link
DEFAULT_LINK_GBPS = 200.0
# per transfer: connection setup, block-table exchange and completion notice
DEFAULT_LINK_LATENCY_S = 1e-3


@dataclass(frozen=True)
class KVLink:
    """The link a prompt's KV cache crosses from a prefill worker to a decode worker."""

    gbps: float = DEFAULT_LINK_GBPS  # gigabits per second
    latency_s: float = DEFAULT_LINK_LATENCY_S

    def __post_init__(self) -> None:
        if self.gbps <= 0 or self.latency_s < 0:
            raise ValueError("need gbps > 0 and latency_s >= 0")

    def transfer_s(self, tokens: int, bytes_per_token: int) -> float:
        """Time to send the KV of `tokens` tokens: fixed latency + bytes / bandwidth."""
        return self.latency_s + tokens * bytes_per_token * 8 / (self.gbps * 1e9)


@dataclass(frozen=True)
class SplitConfig:
    """The two pools and the link between them."""

    prefill_workers: int
    decode_workers: int
    link: KVLink = KVLink()
    prefill_profile: WorkerProfile | None = None  # None: the cluster's (decode) profile

    def __post_init__(self) -> None:
        if self.prefill_workers < 1 or self.decode_workers < 1:
            raise ValueError("need at least one prefill and one decode worker")


def decode_only_view(profile: WorkerProfile) -> WorkerProfile:
    """The profile placement reads for a decode worker: no prompt is prefilled there, so a
    prefill costs nothing (it adds no TTFT wait and no prefill share to the worker)."""
    none = PrefillModel(c0_s=0.0, cp_s_per_prompt=0.0, c1_s_per_token=0.0, c2_s_per_token_sq=0.0)
    return profile.model_copy(update={"prefill": none})


class LeastTTFTPrefill:
    """Prefill-pool placement: the accepting worker where the request's predicted TTFT
    (prefill queued ahead of it + its own) is smallest, so it meets the TTFT SLO wherever any
    worker can. Never waits: a prefill worker queues prompts itself."""

    name = "least-ttft"

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        return min(
            (w for w in workers if w.accepting),
            key=lambda w: w.profile.ttft_s(
                request.input_len, w.queued_prefill_tokens, w.queued_prefill_sq, w.queued_prefill_count
            ),
            default=None,
        )


@dataclass(frozen=True)
class PoolFigures:
    """One pool's size and use over the run."""

    workers: int
    gpus: int
    gpu_seconds: float
    busy_share: float  # time its workers ran iterations / time they were held


@dataclass(frozen=True)
class TransferFigures:
    """KV transfers over the link (requests with more than one output token)."""

    link_gbps: float
    latency_s: float
    transfers: int
    mean_s: float
    p99_s: float
    # first token (prefill end) to the KV's arrival: the transfer plus any wait for a decode
    # worker to be chosen (a request then waits for the decode batch's next step boundary)
    handoff_p50_s: float
    handoff_p99_s: float


@dataclass
class SplitResult(SimResult):
    pools: dict[str, PoolFigures] = field(default_factory=dict)
    kv_transfer: TransferFigures | None = None

    def split_dict(self) -> dict[str, Any]:
        """The per-pool and transfer figures, for the JSON summary."""
        return {
            "pools": {name: asdict(figures) for name, figures in self.pools.items()},
            "kv_transfer": asdict(self.kv_transfer) if self.kv_transfer is not None else None,
        }


@dataclass
class SplitPhaseCluster(Cluster):
    """A `Cluster` of prefill and decode workers. `config.workers` is ignored; `split` sets
    the pools. `policy` and the central queue serve the decode pool."""

    split: SplitConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split is None:
            raise ValueError("SplitPhaseCluster needs a SplitConfig")
        if self.autoscaler is not None:
            raise ValueError("split-phase mode has no autoscaling")
        if self.config.admission is not None:
            raise ValueError("split-phase mode has no admission")
        self.prefill_profile = self.split.prefill_profile or self.profile
        if self.prefill_profile.kv.capacity_tokens < self.profile.max_model_len:
            raise ValueError("the prefill worker's KV cache cannot hold one max_model_len prompt")
        self.prefill_pool: list[WorkerState] = []
        self.prefill_policy = LeastTTFTPrefill()
        self._decode_view = decode_only_view(self.profile)

    def _start_initial_workers(self) -> None:
        engine_options = self.config.engine
        for i in range(self.split.prefill_workers):  # type: ignore[union-attr]
            state = WorkerState(id=f"p{i}", profile=self.prefill_profile)
            self._add_worker(WorkerEngine(state, engine_options, hand_off=True), 0.0, pool=self.prefill_pool)
        for i in range(self.split.decode_workers):  # type: ignore[union-attr]
            state = WorkerState(id=f"d{i}", profile=self._decode_view)
            engine = WorkerEngine(state, engine_options, self._estimator, timing_profile=self.profile)
            self._add_worker(engine, 0.0)

    def scale_to(self, workers: int) -> None:
        raise NotImplementedError("split-phase mode has no autoscaling")

    # ---- the request's path: prefill worker -> link -> decode worker -----------------

    def _arrive(self, index: int, item: TraceRequest) -> None:
        record = self._new_record(index, item)
        worker = self.prefill_policy.choose(record.request, self.prefill_pool, self.now_s)
        if worker is None:
            raise RuntimeError("no prefill worker accepts requests")
        worker.admit(record.request, self.now_s)
        super()._place(record, Decision(worker, True))  # queued for prefill there

    def _worker_done(self, engine: WorkerEngine) -> None:
        super()._worker_done(engine)
        handoffs = engine.take_handoffs()
        if handoffs:
            self._sync_workers()
        for record in handoffs:
            decision = self.policy.decide(record.request, self.workers, self.now_s)
            if decision.worker is None:
                self.queue.push(record.request, self.now_s)  # offered again as decodes finish
                continue
            decision.worker.admit(record.request, self.now_s)
            self._place(record, decision)

    def _place(self, record: RequestRecord, decision: Decision) -> None:
        """A decode worker was chosen (and admitted the request): send the prompt's KV."""
        worker = decision.worker
        record.transfer_s = self.split.link.transfer_s(  # type: ignore[union-attr]
            record.request.input_len, self.prefill_profile.kv.bytes_per_token
        )
        self._push(self.now_s + record.transfer_s, _TRANSFER_DONE, (record, worker), 0)

    def _dispatch(self, kind: int, obj: object, version: int, trace_left: bool) -> None:
        if kind != _TRANSFER_DONE:
            super()._dispatch(kind, obj, version, trace_left)
            return
        record, worker = obj  # type: ignore[misc]
        record.kv_arrived_s = self.now_s
        engine = self._by_id[worker.id].engine
        engine.enqueue_transferred(record)
        self._kick(engine)

    # ---- results ---------------------------------------------------------------------

    def run(self) -> SplitResult:
        result = super().run()
        return SplitResult(result.summary, result.records, pools=self._pools(), kv_transfer=self._transfers())

    def _summary(self) -> Summary:
        return summarize(
            self.records,
            truncated=self.truncated,
            gpu_seconds=self._gpu_seconds(self._all),
            workers_peak=len(self._all),
            gpu_timeline=self._timeline,
        )

    def _pools(self) -> dict[str, PoolFigures]:
        end = self._end_s()
        pools: dict[str, list[_Worker]] = {"prefill": [], "decode": []}
        for w in self._all:
            pools["prefill" if w.pool is self.prefill_pool else "decode"].append(w)
        return {
            name: PoolFigures(
                workers=len(ws),
                gpus=sum(w.engine.profile.tp for w in ws),
                gpu_seconds=self._gpu_seconds(ws),
                busy_share=sum(w.engine.busy_s for w in ws) / sum(end - w.started_s for w in ws) if end > 0 else 0.0,
            )
            for name, ws in pools.items()
        }

    def _transfers(self) -> TransferFigures:
        sent = [r for r in self.records if not math.isnan(r.kv_arrived_s)]
        times = np.array([r.transfer_s for r in sent])
        handoff = np.array([r.kv_arrived_s - r.first_token_s for r in sent])
        link = self.split.link  # type: ignore[union-attr]
        return TransferFigures(
            link_gbps=link.gbps,
            latency_s=link.latency_s,
            transfers=len(sent),
            mean_s=float(times.mean()) if times.size else math.nan,
            p99_s=float(np.percentile(times, 99)) if times.size else math.nan,
            handoff_p50_s=float(np.percentile(handoff, 50)) if handoff.size else math.nan,
            handoff_p99_s=float(np.percentile(handoff, 99)) if handoff.size else math.nan,
        )


def run_split(
    scenario: Scenario,
    policy: str,
    prefill_workers: int,
    decode_workers: int,
    *,
    link: KVLink = KVLink(),
    prefill_profile: WorkerProfile | None = None,
    policy_options: dict[str, Any] | None = None,
) -> SplitResult:
    """Simulate `scenario` in split-phase mode: the named policy places decodes on
    `decode_workers` workers of the scenario's profile; prompts go to `prefill_workers`
    workers of `prefill_profile` (default: the same profile)."""
    cluster = SplitPhaseCluster(
        # the feedback loop follows colocated workers only (not modelled for split pools)
        **{**cluster_parts(scenario, policy, policy_options), "loop": None},
        config=sim_config(scenario, decode_workers),
        split=SplitConfig(prefill_workers, decode_workers, link, prefill_profile),
    )
    return cluster.run()
