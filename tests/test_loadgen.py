"""The load generator against a local HTTP server speaking the OpenAI stream format: what it
parses from a stream (TTFT, ATGT, tokens, the serving worker) and what it reports for a refusal."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from serve_app.tools.loadgen import WorkItem, run_open_loop


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body["max_tokens"] > 8:
        return web.json_response({"error": {"message": "busy", "code": 429}}, status=429,
                                 headers={"Retry-After": "1"})
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await stream.prepare(request)
    if body["max_tokens"] == 7:  # a server that stops answering mid-stream
        await asyncio.sleep(1.0)
    for i in range(body["max_tokens"]):
        await asyncio.sleep(0.01)
        event = {"choices": [{"text": f"t{i}", "finish_reason": None}], "aladdin": {"worker": "w1"}}
        await stream.write(f"data: {json.dumps(event)}\n\n".encode())
    usage = {"choices": [{"text": "", "finish_reason": "length"}],
             "usage": {"prompt_tokens": 3, "completion_tokens": body["max_tokens"]}}
    await stream.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    return stream


async def _run(items: list[WorkItem], timeout_s: float = 300.0):
    app = web.Application()
    app.router.add_post("/v1/completions", _completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        return await run_open_loop(f"http://127.0.0.1:{port}", "m", items, timeout_s=timeout_s)
    finally:
        await runner.cleanup()


def test_a_stream_is_timed_and_a_refusal_reported() -> None:
    results, wall = asyncio.run(_run([WorkItem("a b c", 5, 0.0), WorkItem("a b c", 20, 0.05)]))
    served, refused = results
    assert served.ok and served.status == 200 and served.worker == "w1"
    assert served.output_tokens == 5 and served.prompt_tokens == 3 and len(served.chunk_s) == 5
    assert 0 < served.ttft_s < served.latency_s and served.atgt_s > 0
    assert not refused.ok and refused.status == 429 and "busy" in refused.error
    assert refused.sent_s >= 0.05 and wall >= served.latency_s


def test_the_timeout_bounds_each_wait_not_a_whole_stream() -> None:
    # a stream of 8 chunks 10 ms apart outlasts the 50 ms timeout and is served; a server that
    # goes silent for 1 s is given up on
    (long, stalled), _ = asyncio.run(_run([WorkItem("a", 8, 0.0), WorkItem("a", 7, 0.0)], timeout_s=0.05))
    assert long.ok and long.latency_s > 0.05 and long.output_tokens == 8
    assert not stalled.ok and "Timeout" in stalled.error
