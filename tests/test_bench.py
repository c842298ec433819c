"""The serving benchmark's pieces without a server: trace slicing, prompts matched to trace
lengths (Mooncake prefix blocks shared), SLO scoring, and the files a run writes."""

from __future__ import annotations

import csv
import json

import pytest
from transformers import AutoTokenizer

from placement.traces import TraceRequest
from serve_app.tools.bench import CONTEXT_MARGIN_TOKENS, BenchRun, TraceSlice, bench_headers, load_slice, write_run
from serve_app.tools.loadgen import RequestResult, WorkItem, summarize
from serve_app.tools.trace_prompts import BLOCK_TOKENS, trace_workload



@pytest.fixture(scope="module")
def tokenizer():
    from serve_app.tiny_model import ensure_tiny_model

    return AutoTokenizer.from_pretrained(str(ensure_tiny_model()))


def _azure_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for t, i, o in rows:
            w.writerow([f"2023-11-16 18:00:{t:010.7f}", i, o])
    return str(path)


def test_slice_rescales_recuts_and_fits_the_context(tmp_path):
    trace = _azure_csv(tmp_path / "t.csv", [(0, 10, 5), (2, 20, 6), (4, 30, 7), (6, 5000, 9), (8, 40, 8)])
    reqs, cut = load_slice(TraceSlice(trace=trace, rate_scale=2.0, start_s=1.0, duration_s=2.5, max_model_len=512))
    # scaled arrivals 0,1,2,3,4; the window [1, 3.5) holds the 2nd..4th, re-timed from 0
    assert [r.arrival_s for r in reqs] == [0.0, 1.0, 2.0]
    assert [r.output_len for r in reqs] == [6, 7, 9]
    assert cut == 1 and reqs[2].input_len + reqs[2].output_len == 512 - CONTEXT_MARGIN_TOKENS
    with pytest.raises(ValueError, match="no requests"):
        load_slice(TraceSlice(trace=trace, start_s=100, duration_s=1))


def test_synthetic_slice_covers_the_duration():
    reqs, _ = load_slice(TraceSlice(synthetic_rate=4.0, rate_scale=2.0, duration_s=10, seed=1))
    assert 40 <= len(reqs) <= 120 and reqs[-1].arrival_s < 10


def test_prompts_match_trace_lengths(tokenizer):
    trace = [TraceRequest(0.1 * i, n, 3) for i, n in enumerate((1, 17, 256, 1500))]
    items = trace_workload(trace, tokenizer, seed=3)
    for req, item in zip(trace, items):
        n = len(tokenizer(item.prompt, add_special_tokens=False).input_ids)
        assert abs(n - req.input_len) <= max(2, req.input_len // 100), (n, req.input_len)
        assert (item.max_tokens, item.arrival_s, item.input_len) == (3, req.arrival_s, req.input_len)
    assert len({i.prompt for i in items}) == len(items)


def test_mooncake_blocks_share_prefixes(tokenizer):
    trace = [TraceRequest(0, 2 * BLOCK_TOKENS, 2, (7, 8)), TraceRequest(1, 2 * BLOCK_TOKENS, 2, (7, 9)),
             TraceRequest(2, BLOCK_TOKENS, 2, (10,))]
    a, b, c = (tokenizer(i.prompt, add_special_tokens=False).input_ids for i in trace_workload(trace, tokenizer))
    shared = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
    assert shared >= BLOCK_TOKENS - 2  # block 7 is the same text in both
    assert a[:32] != c[:32]


def _result(ok=True, ttft=0.1, atgt=0.01, n=10):
    return RequestResult(ok=ok, ttft_s=ttft if ok else None, atgt_s=atgt if ok else None, latency_s=1.0,
                         output_tokens=n if ok else 0, status=200 if ok else 503, error=None if ok else "HTTP 503",
                         chunk_s=[ttft, ttft + 0.05, ttft + 0.09] if ok else [])


def test_attainment_counts_failures_as_missed_and_goodput_is_per_second():
    results = [_result(), _result(ttft=0.6), _result(atgt=0.03), _result(ok=False)]
    s = summarize(results, 2.0, slo_ttft_ms=500, slo_atgt_ms=20)
    assert s["slo_met"] == 1 and s["attainment"] == 0.25 and s["goodput_per_s"] == 0.5
    assert s["failed"] == 1 and s["errors"] == ["HTTP 503"]


def test_headers_mark_the_benchmark_and_carry_slos():
    h = bench_headers(250, 20, api_key="k")
    assert h == {"x-aladdin-benchmark": "1", "x-slo-ttft-ms": "250", "x-slo-atgt-ms": "20", "Authorization": "Bearer k"}


def test_run_files(tmp_path):
    workload = [WorkItem("a", 10, 0.0, 5), WorkItem("b", 10, 0.5, 6)]
    results = [_result(), _result(ok=False)]
    summary = summarize(results, 1.0, slo_ttft_ms=500, slo_atgt_ms=20) | {"label": "t"}
    paths = write_run(BenchRun("t", workload, results, summary), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["attainment"] == 0.5 and len(data["requests"]) == 2
    rows = list(csv.DictReader(paths["csv"].open()))
    assert rows[0]["slo_met"] == "True" and rows[1]["status"] == "503"
    assert float(rows[0]["max_gap_ms"]) == pytest.approx(50.0)
    assert paths["plot"].stat().st_size > 1000


def _suite_run(system, k, rep, attainment, goodput):
    return {"system": system, "rate_scale": k, "rep": rep, "attainment": attainment, "goodput_per_s": goodput,
            "offered_rate_per_s": 2.0 * k, "ttft_ms_p50": 50.0, "ttft_ms_p99": 90.0, "atgt_ms_p50": 5.0,
            "atgt_ms_p99": 8.0, "output_tokens_per_s": 100.0, "failed": 0}


def test_report_tables_and_goals():
    from serve_app.tools.bench_report import goals, runs_table

    runs = [_suite_run("rayllm", 1, r, a, 2.0) for r, a in enumerate((0.95, 0.93, 0.91))]
    runs += [_suite_run("aladdin", 1, r, a, 2.0) for r, a in enumerate((1.0, 0.99, 1.0))]
    runs += [_suite_run("rayllm", 2, 0, 0.3, 1.0), _suite_run("aladdin", 2, 0, 0.6, 1.5),
             _suite_run("rayllm", 3, 0, 0.1, 0.5), _suite_run("aladdin", 3, 0, 0.4, 1.0)]
    table = runs_table(runs)
    assert "| aladdin | x1 | 2.00 | 3 | 0.997 (0.990-1.000) |" in table
    lines = goals(runs)
    assert lines[0].startswith("highest load where rayllm meets >= 90% of SLOs: x1") and "(goal >= 0.99: met)" in lines[0]
    assert "x2: goodput aladdin 1.50 vs rayllm 1.00 req/s = 1.50x (goal >= 1.3x: met)" in lines[1]
    assert "x3:" in lines[2] and "2.00x" in lines[2]


def test_prefix_report_goals_and_hits_per_run():
    from serve_app.tools.bench_report import prefix_goals, prefix_hits_table

    runs = [{**_suite_run("rayllm-prefix", 1, 0, 0.95, 2.0), "ttft_ms_p50": 100.0},
            {**_suite_run("aladdin", 1, 0, 0.99, 2.0), "ttft_ms_p50": 60.0},
            _suite_run("rayllm-prefix", 2, 0, 0.5, 1.0), _suite_run("aladdin", 2, 0, 0.8, 1.6)]
    # the actor's counts are cumulative over the deployment: the second run's are the difference
    runs[1]["placement_closed_loop"] = {"prefix_hits": {"w": {"prompt_tokens": 1000, "predicted_tokens": 400,
                                                              "engine_tokens": 500}}}
    runs[3]["placement_closed_loop"] = {"prefix_hits": {"w": {"prompt_tokens": 3000, "predicted_tokens": 1400,
                                                              "engine_tokens": 1500}}}
    lines = prefix_goals(runs)
    assert lines[0].endswith("x1; TTFT p50 60 vs 100 ms = 0.60x (goal <= 0.7x: met)")
    assert lines[1] == "x2: goodput aladdin 1.60 vs rayllm-prefix 1.00 req/s = 1.60x (goal >= 1.3x: met)"
    table = prefix_hits_table(runs)
    assert "| x1 rep0 | 1000 | 400 | 500 | 0.800 |" in table and "| x2 rep0 | 2000 | 1000 | 1000 | 1.000 |" in table
    assert prefix_hits_table(runs[:1]) is None


def test_replay_inputs_from_a_run_keep_served_and_refused_requests(tmp_path):
    from dataclasses import replace

    from placement.evaluation.fidelity import replay_trace
    from serve_app.tools.bench import observed_requests

    workload = [WorkItem(p, 10, 0.1 * i, 5 + i) for i, p in enumerate("abcd")]
    served = [replace(_result(), worker=w, sent_s=0.1 * i, prompt_tokens=5 + i) for i, w in enumerate(("w0", "w1"))]
    refused = replace(_result(ok=False), status=429, error="HTTP 429", sent_s=0.2)
    failed = replace(_result(ok=False), sent_s=0.3)
    results = served + [refused, failed]
    summary = summarize(results, 1.0, slo_ttft_ms=500, slo_atgt_ms=20) | {"label": "t"}
    write_run(BenchRun("t", workload, results, summary), tmp_path)
    _, observed = observed_requests(tmp_path)
    assert [o.refused for o in observed] == [False, False, True, False]
    _, trace = replay_trace(observed, with_refused=True)
    assert len(trace) == 3  # the failed request never reached placement
    assert trace[0].arrival_s == 0.0


@pytest.mark.parametrize("system", ["rayllm", "rayllm-prefix"])
def test_ray_serve_llm_systems_build(system):
    """The Ray Serve LLM baselines' configs validate against the installed Ray (a config Ray
    rejects stops `make bench` only after this app's own runs)."""
    from serve_app.tools.bench_systems import SystemSpec, build_system

    assert build_system(system, SystemSpec()) is not None


def test_a_run_that_served_nothing_prints_instead_of_stopping_the_suite():
    from serve_app.tools.bench_suite import _num

    empty = summarize([RequestResult(ok=False, status=429)], 1.0, slo_ttft_ms=500, slo_atgt_ms=20)
    assert empty["ttft_ms_p50"] is None and _num(empty["ttft_ms_p50"], ".0f") == "-"
    assert _num(empty["attainment"], ".3f") == "0.000"
