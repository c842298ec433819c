"""A worker profile fitted to served requests: the latencies clients measured through the whole
serving path (HTTP, ingress, Ray, engine) rather than the engine's own step times.

An engine profile times vLLM alone; what a client sees per token also carries the serving
path's cost, and on a shared host the engines' CPU contention. Placement and the simulator
predict what clients see, so a provider calibrates on served requests:

- decode: each request's ATGT against the time-averaged batch on its worker during its
  decode (requests decoding there at once) and their context tokens: d0 + d1 B + d2 ctx;
- serving overhead: the TTFT of requests that found their worker idle, minus the engine
  profile's prefill time of their prompt (median): latency outside the engine, which delays a
  client's first token but does not occupy the engine (so it is not prefill time).

Decode coefficients are non-negative least squares with a fifth of the points held out for the
error report (the TTFT "prefill MAPE" is over the idle-worker requests). Prefill, KV capacity
and the context length come from the engine profile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from predictors.latency.profile import DecodeModel, FitReport, WorkerProfile

HELD_OUT_EVERY = 5  # every 5th point is held out of the fit and used for the error report
MIN_OUTPUT_TOKENS = 4  # shorter replies give too few token gaps for an ATGT


@dataclass(frozen=True)
class ServedRequest:
    """One served request: on which worker, when (s, any common clock), its lengths, timings."""

    worker: str
    sent_s: float
    input_len: int
    output_len: int
    ttft_s: float
    latency_s: float

    @property
    def decode_span(self) -> tuple[float, float]:
        return self.sent_s + self.ttft_s, self.sent_s + self.latency_s

    @property
    def atgt_s(self) -> float:
        return (self.latency_s - self.ttft_s) / (self.output_len - 1)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _decode_points(by_worker: dict[str, list[ServedRequest]]) -> tuple[np.ndarray, np.ndarray]:
    rows, targets = [], []
    for requests in by_worker.values():
        for r in requests:
            if r.output_len < MIN_OUTPUT_TOKENS:
                continue
            span = r.decode_span
            length = span[1] - span[0]
            if length <= 0:
                continue
            batch = ctx = 0.0
            for other in requests:
                share = _overlap(span, other.decode_span) / length
                if share > 0:
                    batch += share
                    ctx += share * (other.input_len + other.output_len / 2)
            rows.append((1.0, batch, ctx))
            targets.append(r.atgt_s)
    return np.array(rows), np.array(targets)


def _isolated_ttfts(by_worker: dict[str, list[ServedRequest]]) -> list[ServedRequest]:
    """Requests whose TTFT window no other request's overlapped on their worker: their TTFT is
    their own prefill plus the serving path's latency, with no queue."""
    alone = []
    for requests in by_worker.values():
        for r in requests:
            window = (r.sent_s, r.sent_s + r.ttft_s)
            if not any(o is not r and _overlap(window, (o.sent_s, o.sent_s + o.ttft_s)) > 0 for o in requests):
                alone.append(r)
    return alone


def _fit(rows: np.ndarray, targets: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    if len(targets) < 2 * HELD_OUT_EVERY:
        raise ValueError(f"too few {what} points to fit ({len(targets)}): replay a longer or busier slice")
    held = np.arange(len(targets)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    scale = np.abs(rows[~held]).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(rows[~held] / scale, targets[~held])
    coef = coef / scale
    predicted = rows[held] @ coef
    mape = float(np.mean(np.abs(predicted - targets[held]) / targets[held]) * 100)
    return coef, mape


def fit_served_profile(requests: Sequence[ServedRequest], engine_profile: WorkerProfile, *, source: str) -> WorkerProfile:
    """The engine profile with its decode model refitted to `requests` and the serving path's
    fixed TTFT latency measured (see the module docstring)."""
    by_worker: dict[str, list[ServedRequest]] = defaultdict(list)
    for r in requests:
        by_worker[r.worker].append(r)
    decode_rows, decode_targets = _decode_points(by_worker)
    d, decode_mape = _fit(decode_rows, decode_targets, "decode")
    alone = _isolated_ttfts(by_worker)
    if len(alone) < HELD_OUT_EVERY:
        raise ValueError(f"too few requests found their worker idle ({len(alone)}) to measure the serving "
                         "path's latency: include a lighter load")
    # what the TTFT of a request alone holds beyond the engine's prefill (median: robust to
    # the odd request that met a decode burst)
    residual = np.array([r.ttft_s - engine_profile.prefill_time_s([r.input_len]) for r in alone])
    overhead = max(0.0, float(np.median(residual)))
    predicted = np.array([engine_profile.prefill_time_s([r.input_len]) + overhead for r in alone])
    measured = np.array([r.ttft_s for r in alone])
    return engine_profile.model_copy(update={
        "source": source,
        "notes": f"served fit over {len(requests)} requests on {len(by_worker)} workers; prefill, KV and "
                 f"context length from the engine profile ({engine_profile.source})",
        "decode": DecodeModel(d0_s=float(d[0]), d1_s_per_seq=float(d[1]), d2_s_per_context_token=float(d[2])),
        "serving_overhead_s": overhead,
        "fit": FitReport(prefill_mape_pct=float(np.mean(np.abs(predicted - measured) / measured) * 100),
                         decode_mape_pct=decode_mape, prefill_points=len(alone), decode_points=len(decode_targets),
                         held_out_fraction=1 / HELD_OUT_EVERY),
    })
