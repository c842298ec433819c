"""`aladdin bench-ingress`: its options, its result, and a short run through Serve's proxy on
`sim` workers (real Ray, real HTTP)."""

from __future__ import annotations

import pytest

from serve_app.tools.bench_ingress import BenchIngressOptions, BenchIngressResult, run_bench_ingress
from serve_app.tools.cli import main


def test_options_are_checked_and_requests_have_the_asked_shape() -> None:
    with pytest.raises(ValueError):
        BenchIngressOptions(concurrency=0)
    path, body = BenchIngressOptions(chat=True, stream=True, max_tokens=3).request(5)
    assert path == "/v1/chat/completions" and body["stream"] and body["max_tokens"] == 3 and body["messages"]
    path, body = BenchIngressOptions().request(0)
    assert path == "/v1/completions" and body["ignore_eos"] and "prompt" in body
    config = BenchIngressOptions(workers=3, policy="jsq").config()
    assert (config.engine.kind, config.workers.num_workers, config.placement.policy) == ("sim", 3, "jsq")


def test_the_result_divides_by_what_the_window_saw() -> None:
    result = BenchIngressResult(BenchIngressOptions(), requests=50, window_s=10.0,
                                latencies_s=[0.01] * 50, cpu_s={"ingress": 0.5})
    d = result.to_dict()
    assert d["requests_per_s"] == 5.0 and d["cpu_ms_per_request"] == {"ingress": 10.0}
    assert d["p50_ms"] == pytest.approx(10.0) and "5.0 requests/s" in result.summary()


def test_bad_options_exit_with_code_2(capsys) -> None:
    assert main(["bench-ingress", "--duration", "0"]) == 2
    assert "duration" in capsys.readouterr().err


@pytest.mark.serving
def test_a_short_run_serves_through_the_proxy_and_meters_the_ingress(ray_cluster) -> None:
    result = run_bench_ingress(BenchIngressOptions(workers=2, concurrency=4, duration_s=3.0, warmup_s=2.0),
                               serve_url=ray_cluster.http)
    d = result.to_dict()
    assert result.requests > 0 and result.failed == 0
    assert d["cpu_ms_per_request"]["ingress"] > 0 and d["cpu_ms_per_request"]["proxy"] > 0
    assert d["cpu_ms_per_request"]["deployment"] >= d["cpu_ms_per_request"]["ingress"]


def test_a_result_is_printed_as_json_or_summary_and_written_when_asked(tmp_path, capsys) -> None:
    import json

    from serve_app.tools.result_output import print_result

    result = BenchIngressResult(BenchIngressOptions(), requests=10, window_s=2.0, cpu_s={"ingress": 0.1})
    out = tmp_path / "r.json"
    print_result(result, as_json=False, out=str(out))
    assert capsys.readouterr().out.strip() == result.summary()
    assert json.loads(out.read_text())["requests_per_s"] == 5.0
    print_result(result, as_json=True, out=None)
    assert json.loads(capsys.readouterr().out)["requests"] == 10
