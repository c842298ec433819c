"""Request traces for the simulator: real traces (Azure LLM inference CSV, Mooncake JSONL) and
synthetic ones (Poisson or Gamma arrivals), plus rate scaling and context truncation.

A trace is a list of `TraceRequest` sorted by arrival, the first arrival at time 0.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np

from placement.prefix_cache import Prefix

ARRIVAL_KINDS = ("poisson", "gamma")
# tokens of one prefix block named by a Mooncake trace's hash_ids (the format's definition)
MOONCAKE_BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace: when it arrives and its true prompt and reply lengths (tokens).

    `hash_ids` are Mooncake's prefix-block ids, one per `MOONCAKE_BLOCK_TOKENS` of the prompt
    (empty for other traces): equal ids are equal prefixes, which the simulator's prefix cache
    reuses (`placement.prefix_cache`).
    """

    arrival_s: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class LengthMix:
    """Log-normal prompt and reply lengths of a synthetic trace, by mean and coefficient of
    variation (std / mean). Defaults are near the Azure conversation trace (1155 / 211 tokens)."""

    input_mean: float = 1155.0
    input_cv: float = 1.0
    output_mean: float = 211.0
    output_cv: float = 1.0


def trace_prefix(request: TraceRequest) -> Prefix | None:
    """The request's prefix blocks as a prefix cache names them (None without hash_ids)."""
    if not request.hash_ids:
        return None
    return Prefix(MOONCAKE_BLOCK_TOKENS, request.hash_ids).whole(request.input_len)


def _starting_at_zero(requests: list[TraceRequest]) -> list[TraceRequest]:
    requests.sort(key=lambda r: r.arrival_s)
    if not requests or requests[0].arrival_s == 0.0:
        return requests
    t0 = requests[0].arrival_s
    return [replace(r, arrival_s=r.arrival_s - t0) for r in requests]


def _azure_seconds(stamp: str, day_cache: dict[str, float]) -> float:
    # "2023-11-16 18:15:46.6805900": seven fractional digits, which datetime does not parse;
    # the date is looked up once per day and the clock part is split by hand (fast).
    day, clock = stamp.split(" ")
    base = day_cache.get(day)
    if base is None:
        base = day_cache[day] = date.fromisoformat(day).toordinal() * 86400.0
    h, m, s = clock.split(":")
    return base + int(h) * 3600 + int(m) * 60 + float(s)


def read_azure_csv(path: str | Path) -> list[TraceRequest]:
    """Azure LLM inference trace 2023 (columns TIMESTAMP, ContextTokens, GeneratedTokens)."""
    days: dict[str, float] = {}
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        requests = [
            TraceRequest(
                _azure_seconds(row["TIMESTAMP"], days), int(row["ContextTokens"]), int(row["GeneratedTokens"])
            )
            for row in rows
        ]
    return _starting_at_zero(requests)


def read_mooncake_jsonl(path: str | Path) -> list[TraceRequest]:
    """Mooncake FAST'25 trace: one JSON object a line with timestamp (ms), input_length,
    output_length and hash_ids."""
    requests = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            requests.append(
                TraceRequest(
                    row["timestamp"] / 1000.0,
                    int(row["input_length"]),
                    int(row["output_length"]),
                    tuple(row.get("hash_ids", ())),
                )
            )
    return _starting_at_zero(requests)


def write_mooncake_jsonl(trace: list[TraceRequest], path: str | Path) -> Path:
    """Write a trace in Mooncake's JSONL format (ms timestamps), which `load_trace` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in trace:
            f.write(json.dumps({"timestamp": r.arrival_s * 1000.0, "input_length": r.input_len,
                                "output_length": r.output_len, "hash_ids": list(r.hash_ids)}) + "\n")
    return path


def load_trace(path: str | Path) -> list[TraceRequest]:
    """Read a trace, choosing the reader by file type (.csv: Azure, .jsonl: Mooncake)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_azure_csv(path)
    if suffix in (".jsonl", ".json"):
        return read_mooncake_jsonl(path)
    raise ValueError(f"unknown trace type {suffix!r} for {path}: expected .csv (Azure) or .jsonl (Mooncake)")


def _lognormal(rng: np.random.Generator, mean: float, cv: float, n: int) -> np.ndarray:
    sigma2 = math.log1p(cv * cv)
    mu = math.log(mean) - sigma2 / 2  # so the mean of the samples is `mean`
    return np.maximum(1, np.rint(rng.lognormal(mu, math.sqrt(sigma2), n))).astype(np.int64)


def synthetic(
    n: int,
    rate: float,
    *,
    arrival: str = "poisson",
    cv: float = 1.0,
    lengths: LengthMix = LengthMix(),
    seed: int = 0,
) -> list[TraceRequest]:
    """`n` requests arriving at `rate` per second on average.

    Inter-arrival gaps are exponential (`poisson`) or Gamma with coefficient of variation `cv`
    (`gamma`; cv > 1 is burstier than Poisson, cv = 1 is Poisson).
    """
    if n < 0 or rate <= 0:
        raise ValueError("need n >= 0 and rate > 0")
    if arrival not in ARRIVAL_KINDS:
        raise ValueError(f"arrival must be one of {ARRIVAL_KINDS}, got {arrival!r}")
    rng = np.random.default_rng(seed)
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    else:
        if cv <= 0:
            raise ValueError("cv must be > 0")
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    arrivals = np.cumsum(gaps) - (gaps[0] if n else 0.0)
    inputs = _lognormal(rng, lengths.input_mean, lengths.input_cv, n)
    outputs = _lognormal(rng, lengths.output_mean, lengths.output_cv, n)
    return [TraceRequest(float(t), int(i), int(o)) for t, i, o in zip(arrivals, inputs, outputs)]


def scale_rate(trace: list[TraceRequest], k: float) -> list[TraceRequest]:
    """The same requests arriving k times as fast (inter-arrival times divided by k)."""
    if k <= 0:
        raise ValueError("rate scale must be > 0")
    return [replace(r, arrival_s=r.arrival_s / k) for r in trace]


def sample_prefix_groups(trace: list[TraceRequest], share: float, seed: int = 0) -> list[TraceRequest]:
    """A `share` of the trace's prefix groups, whole (requests whose first prefix block is the
    same: a conversation, or prompts behind one system prompt), chosen by `seed`, arrival times
    unchanged. Thinning a trace this way keeps its prefix reuse; thinning requests or stretching
    time to lower the rate loses it (later turns leave the window). Needs `hash_ids` (Mooncake)."""
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    groups = sorted({r.hash_ids[0] for r in trace if r.hash_ids})
    if not groups:
        raise ValueError("sampling prefix groups needs a trace with prefix hashes (Mooncake hash_ids)")
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(groups, size=max(1, round(share * len(groups))), replace=False).tolist())
    return [r for r in trace if r.hash_ids and r.hash_ids[0] in keep]


def truncate_to_context(trace: list[TraceRequest], max_model_len: int) -> tuple[list[TraceRequest], int]:
    """Fit every request into `max_model_len` tokens; returns the trace and how many changed.

    The reply is capped at max_model_len - 1 tokens, then the prompt is cut to leave room for
    it, as a client does that truncates the prompt to fit its max_tokens: the reply's decode
    work, which placement is about, is kept wherever it fits. Replies of 0 tokens become 1
    (an engine always emits the first token).
    """
    if max_model_len < 2:
        raise ValueError("max_model_len must be >= 2")
    out: list[TraceRequest] = []
    changed = 0
    for r in trace:
        output_len = min(max(r.output_len, 1), max_model_len - 1)
        input_len = min(max(r.input_len, 1), max_model_len - output_len)
        if (input_len, output_len) != (r.input_len, r.output_len):
            changed += 1
            r = replace(r, input_len=input_len, output_len=output_len)
        out.append(r)
    return out, changed
