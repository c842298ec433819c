"""Open-loop load generation against an OpenAI-compatible endpoint, and its latency summary.

Requests go out on their arrival schedule and never wait for earlier responses. Output
lengths are forced with `max_tokens` + `ignore_eos`, as vLLM's own benchmarks do.
TTFT = first streamed token - send time; ATGT = (last token - first token) / (tokens - 1).
The client is aiohttp, as vLLM's own serving benchmark's: a burst of streams through httpx cost
the 2-core test VM ~12 ms of client CPU each, time the engines and the server under test lost.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from placement.simulator.metrics import meets_slos
from predictors.sharegpt import iter_prompt_reply_pairs


@dataclass(frozen=True)
class WorkItem:
    """One request to send: its prompt, forced output length and arrival offset (s)."""

    prompt: str
    max_tokens: int
    arrival_s: float
    input_len: int = 0  # the trace's prompt length the prompt was cut to (0: not from a trace)


@dataclass
class RequestResult:
    """What one request got. Times in seconds; `chunk_s` are stream chunk arrivals after the send."""

    ok: bool
    ttft_s: float | None = None
    atgt_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    status: int | None = None
    arrival_s: float = 0.0  # scheduled send time, from the start of the run
    sent_s: float = 0.0  # actual send time, from the start of the run
    chunk_s: list[float] = field(default_factory=list)
    worker: str | None = None  # the replica that served it, when the server says (this app does)


def sharegpt_workload(
    tokenizer: Any,
    num_requests: int,
    rate: float,
    *,
    seed: int = 0,
    max_prompt_tokens: int = 512,
    max_output_tokens: int = 256,
    min_output_tokens: int = 4,
) -> list[WorkItem]:
    """ShareGPT first-turn prompts with their reply's token length as the forced output length."""
    rng = random.Random(seed)
    pairs = list(iter_prompt_reply_pairs(limit=max(num_requests * 20, 200)))
    rng.shuffle(pairs)
    items: list[WorkItem] = []
    t = 0.0
    for prompt, reply in pairs:
        ids = tokenizer(prompt).input_ids
        if len(ids) > max_prompt_tokens:
            prompt = tokenizer.decode(ids[:max_prompt_tokens])
        out = min(max(len(tokenizer(reply).input_ids), min_output_tokens), max_output_tokens)
        t += rng.expovariate(rate)
        items.append(WorkItem(prompt=prompt, max_tokens=out, arrival_s=t))
        if len(items) == num_requests:
            break
    return items


def _request_body(model: str, item: WorkItem) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": item.prompt,
        "max_tokens": item.max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _send(session: aiohttp.ClientSession, url: str, model: str, item: WorkItem,
                headers: dict[str, str]) -> RequestResult:
    start = time.perf_counter()
    chunks: list[float] = []
    usage: dict[str, int] = {}
    worker = None
    try:
        # the send time as a front proxy would stamp it: the server counts the TTFT from here too
        stamped = {"x-request-start": f"t={time.time():.3f}", **headers}
        async with session.post(url, json=_request_body(model, item), headers=stamped) as resp:
            if resp.status != 200:
                text = (await resp.read()).decode(errors="replace")
                return RequestResult(ok=False, status=resp.status, error=f"HTTP {resp.status}: {text[:200]}")
            async for raw in resp.content:  # server-sent events, one line at a time
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return RequestResult(ok=False, status=200, error=str(event["error"].get("message")))
                if event.get("usage"):
                    usage = event["usage"]
                worker = (event.get("aladdin") or {}).get("worker") or worker
                # a chunk carries tokens unless it is only the finish marker (empty text)
                if any(c.get("text") or c.get("finish_reason") is None for c in event.get("choices") or ()):
                    chunks.append(time.perf_counter() - start)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return RequestResult(ok=False, error=repr(exc))
    if not chunks:
        return RequestResult(ok=False, status=200, error="no tokens streamed")
    n_out = usage.get("completion_tokens", 0)
    return RequestResult(
        ok=True,
        status=200,
        ttft_s=chunks[0],
        atgt_s=(chunks[-1] - chunks[0]) / (n_out - 1) if n_out > 1 else None,
        latency_s=chunks[-1],
        prompt_tokens=usage.get("prompt_tokens", 0),
        output_tokens=n_out,
        chunk_s=chunks,
        worker=worker,
    )


async def run_open_loop(
    base_url: str,
    model: str,
    workload: list[WorkItem],
    *,
    timeout_s: float = 300.0,
    headers: dict[str, str] | None = None,
    progress: bool = False,
) -> tuple[list[RequestResult], float]:
    """Send `workload` on its arrival schedule; return per-request results and wall time."""
    from tqdm import tqdm

    url = f"{base_url.rstrip('/')}/v1/completions"
    bar = tqdm(total=len(workload), unit="req", disable=not progress, dynamic_ncols=True)
    # every request its own connection (open loop: none waits for a free one); SSE lines up to 1 MiB
    connector = aiohttp.TCPConnector(limit=0)
    # a limit on each wait (connecting, each read), not on a whole stream, as httpx's timeout was
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=1 << 20) as session:
        t0 = time.perf_counter()

        async def fire(item: WorkItem) -> RequestResult:
            await asyncio.sleep(max(0.0, item.arrival_s - (time.perf_counter() - t0)))
            sent = time.perf_counter() - t0
            result = await _send(session, url, model, item, headers or {})
            result.arrival_s, result.sent_s = item.arrival_s, sent
            bar.update(1)
            return result

        try:
            results = await asyncio.gather(*(fire(item) for item in workload))
        finally:
            bar.close()
        return list(results), time.perf_counter() - t0


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def request_meets_slos(r: RequestResult, slo_ttft_ms: float, slo_atgt_ms: float) -> bool:
    """A served request meets its SLOs (a one-token reply has no ATGT to miss)."""
    if not r.ok or r.ttft_s is None:
        return False
    return meets_slos(r.ttft_s, r.atgt_s or 0.0, slo_ttft_ms / 1e3, slo_atgt_ms / 1e3)


def summarize(
    results: list[RequestResult], wall_s: float, *, slo_ttft_ms: float | None = None, slo_atgt_ms: float | None = None
) -> dict[str, Any]:
    """Counts, TTFT/ATGT p50/p99 (ms) and throughput of one run; with SLOs, also attainment
    (met / sent: failures count as missed) and goodput (requests meeting SLOs per second)."""
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None]
    atgt = [r.atgt_s * 1e3 for r in ok if r.atgt_s is not None]
    out_tokens = sum(r.output_tokens for r in ok)
    summary: dict[str, Any] = {
        "requests": len(results),
        "succeeded": len(ok),
        "failed": len(results) - len(ok),
        "wall_s": round(wall_s, 3),
        "ttft_ms_p50": _pct(ttft, 50),
        "ttft_ms_p99": _pct(ttft, 99),
        "atgt_ms_p50": _pct(atgt, 50),
        "atgt_ms_p99": _pct(atgt, 99),
        "output_tokens": out_tokens,
        "output_tokens_per_s": round(out_tokens / wall_s, 2) if wall_s > 0 else None,
        "requests_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "errors": sorted({r.error for r in results if r.error})[:5],
    }
    if slo_ttft_ms is not None and slo_atgt_ms is not None:
        met = sum(request_meets_slos(r, slo_ttft_ms, slo_atgt_ms) for r in results)
        summary.update(
            slo_ttft_ms=slo_ttft_ms,
            slo_atgt_ms=slo_atgt_ms,
            slo_met=met,
            attainment=met / len(results) if results else None,
            goodput_per_s=round(met / wall_s, 3) if wall_s > 0 else None,
        )
    return summary
