"""Per-request options a client sets in headers: SLO overrides and the benchmark mark."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve_app.http.errors import OpenAIError

SLO_HEADERS = {"ttft": "x-slo-ttft-ms", "atgt": "x-slo-atgt-ms"}
# A benchmark forces reply lengths with max_tokens + ignore_eos; capping the prediction by
# max_tokens would then hand the predictor the true length. Marked requests are not capped.
BENCHMARK_HEADER = "x-aladdin-benchmark"


@dataclass(frozen=True)
class RequestOptions:
    """What a request's headers ask for: SLO overrides (ms) and the benchmark mark; and when
    the ingress received it (wall clock; None: now, for handle calls)."""

    slo_ms: dict[str, float] = field(default_factory=dict)
    benchmark: bool = False
    received_s: float | None = None


def request_options(headers: Any, received_s: float | None = None) -> RequestOptions:
    """Parse x-slo-ttft-ms / x-slo-atgt-ms and x-aladdin-benchmark; 400 on a bad value."""
    slo_ms: dict[str, float] = {}
    for key, name in SLO_HEADERS.items():
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 < value <= 3_600_000:
            raise OpenAIError(400, f"header {name} must be a number of milliseconds in (0, 3600000]", param=name)
        slo_ms[key] = value
    mark = headers.get(BENCHMARK_HEADER)
    if mark is not None and mark.strip().lower() not in ("1", "true", "0", "false"):
        raise OpenAIError(400, f"header {BENCHMARK_HEADER} must be 1, true, 0 or false", param=BENCHMARK_HEADER)
    return RequestOptions(slo_ms, benchmark=mark is not None and mark.strip().lower() in ("1", "true"),
                          received_s=received_s)
