"""Per-request options a client sets in headers: SLO overrides, the benchmark mark, and when a
front proxy received the request."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from serve_app.http.errors import OpenAIError

SLO_HEADERS = {"ttft": "x-slo-ttft-ms", "atgt": "x-slo-atgt-ms"}
# the largest SLO a request may ask for, ms (an hour), in a header or its body
MAX_SLO_MS = 3_600_000
# A benchmark forces reply lengths with max_tokens + ignore_eos; capping the prediction by
# max_tokens would then hand the predictor the true length. Marked requests are not capped.
BENCHMARK_HEADER = "x-aladdin-benchmark"
# When a proxy in front (nginx: `proxy_set_header X-Request-Start "t=${msec}";`) received the
# request: its TTFT counts from then, so time queued before the ingress counts too.
REQUEST_START_HEADER = "x-request-start"
# a start older than this is a clock or format error, not a queue
MAX_REQUEST_AGE_S = 3600.0


@dataclass(frozen=True)
class RequestOptions:
    """What a request's headers ask for: SLO overrides (ms) and the benchmark mark; and when
    it arrived (wall clock: the front proxy's `X-Request-Start` when earlier than the ingress's
    receipt; None: now, for handle calls)."""

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
        if not 0 < value <= MAX_SLO_MS:
            raise OpenAIError(400, f"header {name} must be a number of milliseconds in (0, {MAX_SLO_MS}]", param=name)
        slo_ms[key] = value
    start = headers.get(REQUEST_START_HEADER)
    if start is not None and received_s is not None:
        received_s = min(received_s, request_start_s(start, received_s))
    mark = headers.get(BENCHMARK_HEADER)
    if mark is not None and mark.strip().lower() not in ("1", "true", "0", "false"):
        raise OpenAIError(400, f"header {BENCHMARK_HEADER} must be 1, true, 0 or false", param=BENCHMARK_HEADER)
    return RequestOptions(slo_ms, benchmark=mark is not None and mark.strip().lower() in ("1", "true"),
                          received_s=received_s)


def request_start_s(value: str, now_s: float) -> float:
    """An `X-Request-Start` header's time, s since the epoch: `t=` and a number of seconds,
    milliseconds, microseconds or nanoseconds (told apart by size, as APM agents do); 400 when it is not one
    or is more than `MAX_REQUEST_AGE_S` old."""
    raw = value.strip()
    raw = raw[2:] if raw.startswith("t=") else raw
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise OpenAIError(400, f"header {REQUEST_START_HEADER} must be t=<time since the epoch>, in s, ms, us or ns",
                          param=REQUEST_START_HEADER)
    start_s = number / 1e9 if number > 1e17 else number / 1e6 if number > 1e14 else number / 1e3 if number > 1e11 else number
    if now_s - start_s > MAX_REQUEST_AGE_S:
        raise OpenAIError(400, f"header {REQUEST_START_HEADER} is more than {MAX_REQUEST_AGE_S:.0f} s old: "
                          "check the proxy's clock and the header's unit", param=REQUEST_START_HEADER)
    return start_s
