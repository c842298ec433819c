"""A worker profile fitted to served requests: the latencies clients measured through the whole
serving path (HTTP, ingress, Ray, engine) rather than the engine's own step times.

An engine profile times vLLM alone; what a client sees per token also carries the serving
path's cost, and on a shared host the engines' CPU contention. Placement and the simulator
predict what clients see, so a provider calibrates on served requests:

- decode: each request's ATGT against the time-averaged batch on its worker during its
  decode (requests decoding there at once) and their context tokens: d0 + d1 B + d2 ctx;
- serving overhead: the TTFT of requests that found their worker idle, minus the engine
  profile's prefill time of their prompt: latency outside the engine, which delays a client's
  first token but does not occupy the engine (so it is not prefill time). It is fitted as
  o0 + o1 N, N the requests in flight in the whole deployment when the request was sent (the
  proxy and ingress serve every worker), robustly (soft-L1: a request that met a decode burst
  does not pull the line).

Decode coefficients are non-negative least squares with a fifth of the points held out for the
error report (the TTFT "prefill MAPE" is over the idle-worker requests). Prefill, KV capacity
and the context length come from the engine profile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, nnls

from predictors.latency.profile import DecodeModel, FitReport, WorkerProfile

HELD_OUT_EVERY = 5  # every 5th point is held out of the fit and used for the error report
MIN_OUTPUT_TOKENS = 4  # shorter replies give too few token gaps for an ATGT
LOW_TAIL = 0.1  # without idle-worker requests: the TTFT-minus-prefill quantile taken as overhead


@dataclass(frozen=True)
class ServedRequest:
    """One served request: on which worker, when (s, any common clock), its lengths, timings."""

    worker: str
    sent_s: float
    input_len: int
    output_len: int
    ttft_s: float
    latency_s: float
    deployment: str = ""  # requests of one deployment (one run) share its serving path

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


def _in_flight_at_send(alone: Sequence[ServedRequest], requests: Sequence[ServedRequest]) -> np.ndarray:
    """For each request of `alone`: how many other requests of its deployment, and of its
    worker, were in flight (sent, not yet finished) when it was sent; shape (n, 2)."""
    spans: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for r in requests:
        spans[r.deployment].append((r.worker, r.sent_s, r.sent_s + r.latency_s))
    counts = [[(w, start < r.sent_s < end) for w, start, end in spans[r.deployment]] for r in alone]
    return np.array([(sum(hit for _, hit in c), sum(hit for w, hit in c if w == r.worker))
                     for r, c in zip(alone, counts)], float).reshape(-1, 2)


def _fit_overhead(residual: np.ndarray, in_flight: np.ndarray) -> tuple[float, float]:
    """(o0, o1) of residual ~ o0 + o1 deployment + o2 own worker (in-flight counts), all >= 0,
    robust to outliers. The own-worker term takes what the engine itself adds (a request's
    prefill waits for the decode steps of the requests already there, which the simulator
    models) so that o1 is the shared serving path's part only."""
    start = [max(0.0, float(np.median(residual))), 0.0, 0.0]
    scale = max(float(np.median(np.abs(residual))), 1e-4)
    fit = least_squares(lambda o: o[0] + in_flight @ o[1:] - residual, start, bounds=([0, 0, 0], np.inf),
                        loss="soft_l1", f_scale=scale / 4)
    return float(fit.x[0]), float(fit.x[1])


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
    note = ""
    if len(alone) >= HELD_OUT_EVERY:
        # what the TTFT of a request alone on its worker holds beyond the engine's prefill
        residual = np.array([r.ttft_s - engine_profile.prefill_time_s([r.input_len]) for r in alone])
        in_flight = _in_flight_at_send(alone, requests)
        overhead, per_request = _fit_overhead(residual, in_flight)
    else:
        # a worker was never idle (long prompts and replies keep it busy): the requests that
        # queued least bound the serving path's latency from above, so its lower tail is the
        # estimate; the placement actor's online correction refines it as it serves
        alone = list(requests)
        residual = np.array([r.ttft_s - engine_profile.prefill_time_s([r.input_len]) for r in alone])
        overhead, per_request = max(0.0, float(np.quantile(residual, LOW_TAIL))), 0.0
        in_flight = np.zeros((len(alone), 1))
        note = (f"; no worker was idle often enough to isolate the serving path, so its latency is the "
                f"{LOW_TAIL:.0%} quantile of TTFT minus prefill over all requests")
    predicted = (np.array([engine_profile.prefill_time_s([r.input_len]) for r in alone])
                 + overhead + per_request * in_flight[:, 0])
    measured = np.array([r.ttft_s for r in alone])
    return engine_profile.model_copy(update={
        "source": source,
        "notes": f"served fit over {len(requests)} requests on {len(by_worker)} workers; prefill, KV and "
                 f"context length from the engine profile ({engine_profile.source}){note}",
        "decode": DecodeModel(d0_s=float(d[0]), d1_s_per_seq=float(d[1]), d2_s_per_context_token=float(d[2])),
        "serving_overhead_s": overhead,
        "serving_overhead_per_request_s": per_request,
        "fit": FitReport(prefill_mape_pct=float(np.mean(np.abs(predicted - measured) / measured) * 100),
                         decode_mape_pct=decode_mape, prefill_points=len(alone), decode_points=len(decode_targets),
                         held_out_fraction=1 / HELD_OUT_EVERY),
    })
