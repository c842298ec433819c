"""`aladdin bench`: replay a trace slice open-loop against any OpenAI-compatible endpoint and
score it against TTFT/ATGT SLOs.

Arrival times come from the trace (Azure CSV, Mooncake JSONL) or a synthetic Poisson trace,
scaled by `rate_scale` and cut to `duration_s`; prompts are ShareGPT text of the trace's input
lengths (serve_app.tools.trace_prompts); reply lengths are forced by max_tokens + ignore_eos.
Requests carry `x-aladdin-benchmark: 1` so this app's predictor does not read the forced
length from max_tokens, and the SLOs as x-slo-ttft-ms / x-slo-atgt-ms (other servers ignore
all three headers).
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from dataclasses import asdict, dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx

from placement.evaluation.fidelity import ObservedRequest
from placement.traces import TraceRequest, load_trace, sample_prefix_groups, scale_rate, synthetic, truncate_to_context
from predictors.latency.served_fit import ServedRequest
from serve_app.http.request_options import BENCHMARK_HEADER, SLO_HEADERS
from serve_app.tools.loadgen import RequestResult, WorkItem, request_meets_slos, run_open_loop, summarize

#: tokens kept free of the context window: the server re-tokenizes the decoded prompt, which
#: can come out a few tokens longer than the slice it was decoded from
CONTEXT_MARGIN_TOKENS = 16


@dataclass(frozen=True)
class TraceSlice:
    """Which part of which trace to replay, and how fast."""

    trace: str | None = None  # Azure .csv or Mooncake .jsonl; None: synthetic Poisson
    synthetic_rate: float = 2.0  # requests/s of the synthetic trace (before rate_scale)
    rate_scale: float = 1.0
    start_s: float = 0.0  # offset into the (scaled) trace
    duration_s: float = 60.0
    max_model_len: int = 2048
    seed: int = 0
    # Mooncake: replay this share of the prefix groups, whole (placement.traces.sample_prefix_groups),
    # so a faster rate_scale keeps conversations' reuse in a short window
    prefix_groups: float | None = None


def load_slice(spec: TraceSlice) -> tuple[list[TraceRequest], int]:
    """The requests arriving in [start_s, start_s + duration_s) of the scaled trace, re-timed
    from 0 and fitted to the context window; also how many were cut to fit."""
    if spec.duration_s <= 0:
        raise ValueError("duration must be > 0 s")
    if spec.trace:
        trace = load_trace(spec.trace)
    else:
        n = int(spec.synthetic_rate * spec.rate_scale * (spec.start_s + spec.duration_s) * 1.5) + 16
        trace = synthetic(n, spec.synthetic_rate, seed=spec.seed)
    if spec.prefix_groups is not None:
        trace = sample_prefix_groups(trace, spec.prefix_groups, seed=spec.seed)
    trace = scale_rate(trace, spec.rate_scale)
    window = [r for r in trace if spec.start_s <= r.arrival_s < spec.start_s + spec.duration_s]
    if not window:
        raise ValueError(f"no requests arrive in [{spec.start_s}, {spec.start_s + spec.duration_s}) s of the trace")
    t0 = window[0].arrival_s
    window = [TraceRequest(r.arrival_s - t0, r.input_len, r.output_len, r.hash_ids) for r in window]
    return truncate_to_context(window, spec.max_model_len - CONTEXT_MARGIN_TOKENS)


def served_model(url: str, api_key: str | None = None) -> tuple[str, int | None]:
    """The first model the endpoint lists, and its max_model_len when it says."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=30)
    response.raise_for_status()
    first = response.json()["data"][0]
    return first["id"], first.get("max_model_len")


def bench_headers(slo_ttft_ms: float, slo_atgt_ms: float, api_key: str | None = None) -> dict[str, str]:
    """Headers every bench request carries (see the module docstring)."""
    headers = {
        BENCHMARK_HEADER: "1",
        SLO_HEADERS["ttft"]: f"{slo_ttft_ms:g}",
        SLO_HEADERS["atgt"]: f"{slo_atgt_ms:g}",
    }
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


@dataclass
class BenchRun:
    """One replay: what was sent, what came back, and the summary."""

    label: str
    workload: list[WorkItem]
    results: list[RequestResult]
    summary: dict[str, Any]


def run_bench(
    url: str,
    workload: list[WorkItem],
    *,
    model: str,
    slo_ttft_ms: float,
    slo_atgt_ms: float,
    label: str = "bench",
    api_key: str | None = None,
    timeout_s: float = 300.0,
    progress: bool = True,
) -> BenchRun:
    """Send `workload` open-loop to `url` and summarize it against the SLOs."""
    results, wall = asyncio.run(run_open_loop(
        url.rstrip("/"), model, workload, timeout_s=timeout_s,
        headers=bench_headers(slo_ttft_ms, slo_atgt_ms, api_key), progress=progress,
    ))
    summary = summarize(results, wall, slo_ttft_ms=slo_ttft_ms, slo_atgt_ms=slo_atgt_ms)
    summary["label"] = label
    summary["offered_rate_per_s"] = round(len(workload) / max(workload[-1].arrival_s, 1e-9), 3) if workload else 0.0
    summary["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return BenchRun(label, workload, results, summary)


CSV_FIELDS = ("index", "arrival_s", "sent_s", "input_len", "prompt_tokens", "max_tokens", "output_tokens",
              "ok", "status", "worker", "ttft_ms", "atgt_ms", "latency_ms", "max_gap_ms", "slo_met", "error")


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 3)


def request_rows(run: BenchRun) -> list[dict[str, Any]]:
    """One flat row per request (the CSV's rows)."""
    slo_ttft, slo_atgt = run.summary["slo_ttft_ms"], run.summary["slo_atgt_ms"]
    rows = []
    for i, (item, r) in enumerate(zip(run.workload, run.results)):
        gaps = [b - a for a, b in zip(r.chunk_s, r.chunk_s[1:])]
        rows.append({
            "index": i, "arrival_s": round(item.arrival_s, 4), "sent_s": round(r.sent_s, 4),
            "input_len": item.input_len, "prompt_tokens": r.prompt_tokens, "max_tokens": item.max_tokens,
            "output_tokens": r.output_tokens, "ok": r.ok, "status": r.status, "worker": r.worker,
            "ttft_ms": _ms(r.ttft_s), "atgt_ms": _ms(r.atgt_s), "latency_ms": _ms(r.latency_s),
            "max_gap_ms": _ms(max(gaps)) if gaps else None,
            "slo_met": request_meets_slos(r, slo_ttft, slo_atgt), "error": r.error,
        })
    return rows


def write_run(run: BenchRun, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
    """results.json (summary + per-request rows), requests.csv and, with `plot`, latency.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = request_rows(run)
    paths = {"json": out / "results.json", "csv": out / "requests.csv"}
    paths["json"].write_text(json.dumps({"summary": run.summary, "requests": rows}, indent=1))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    if plot:
        from serve_app.tools.bench_plot import plot_run

        paths["plot"] = plot_run(run.summary, rows, out / "latency.png")
    return paths


def slice_dict(spec: TraceSlice) -> dict[str, Any]:
    """The slice as recorded in results (for reproducing a run)."""
    return asdict(spec)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's results.json: {"summary": ..., "requests": [row, ...]}."""
    return json.loads((Path(run_dir) / "results.json").read_text())


def served_requests(run_dirs: list[str | Path]) -> list[ServedRequest]:
    """The served requests of run folders whose server named the worker (this app's runs), as
    input for a served-profile fit; workers of different runs are kept apart."""
    requests = [
        ServedRequest(worker=f"{run_dir}:{r['worker']}", sent_s=r["sent_s"], input_len=r["prompt_tokens"],
                      output_len=r["output_tokens"], ttft_s=r["ttft_ms"] / 1e3, latency_s=r["latency_ms"] / 1e3,
                      deployment=str(run_dir))
        for run_dir in run_dirs for r in read_run(run_dir)["requests"] if r["ok"] and r.get("worker")
    ]
    if not requests:
        raise ValueError("no served request names its worker: a served-profile fit needs runs of this app")
    return requests


def observed_requests(run_dir: str | Path) -> tuple[dict[str, Any], list[ObservedRequest]]:
    """A run's summary and what each request measured, for a simulator fidelity check."""
    data = read_run(run_dir)
    observed = [
        ObservedRequest(
            sent_s=r["sent_s"], input_len=r["prompt_tokens"] or r["input_len"],
            output_len=r["output_tokens"] or r["max_tokens"], ok=bool(r["ok"]),
            ttft_s=None if r["ttft_ms"] is None else r["ttft_ms"] / 1e3,
            atgt_s=None if r["atgt_ms"] is None else r["atgt_ms"] / 1e3,
            refused=r["status"] == HTTPStatus.TOO_MANY_REQUESTS,
        )
        for r in data["requests"]
    ]
    return data["summary"], observed
