"""The sim engine: token counts, finish reasons, the profile's schedule, batching, KV limits,
cancellation and validation. Pure asyncio on a fake clock: every time checked is the model's
(exact up to float rounding), none is wall-clock."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from placement.simulator.metrics import RequestRecord
from placement.simulator.worker_engine import EngineOptions, WorkerEngine
from placement.state import Request, WorkerState
from predictors.latency.families import load_profile_family
from serve_app.worker.engine_snapshot import EngineSnapshot as Snapshot
from serve_app.worker.sim_engine import TOKEN_TEXT, SimEngine, SimEngineDeadError
from serve_app.worker.worker_protocol import GenerateChunk

TINY = load_profile_family("tiny-cpu").profile(1)
A100 = load_profile_family("llama-2-7b-a100").profile(1)
T = TypeVar("T")


class FakeClock:
    """Virtual time. `sleep` first lets every ready task run, so a consumer handed tokens
    reads the time they were produced, then moves time on by the delay."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)
        self.now += seconds


@dataclass
class Setup:
    engine: SimEngine
    clock: FakeClock
    snapshot: Snapshot

    async def collect(
        self, prompt_len: int, sampling: dict[str, Any], rid: str
    ) -> list[tuple[float, GenerateChunk]]:
        """The request's chunks, each with the (fake) time it was received."""
        return [(self.clock.now, c) async for c in self.engine.generate([1] * prompt_len, sampling, rid)]


def make(profile=TINY, *, max_num_seqs: int = 256, max_model_len: int | None = None, **kwargs: Any) -> Setup:
    clock = FakeClock()
    snapshot = Snapshot()
    engine = SimEngine(
        profile,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len or profile.max_model_len,
        snapshot=snapshot,
        clock=clock.time,
        sleep=clock.sleep,
        **kwargs,
    )
    return Setup(engine, clock, snapshot)


def run(coro: Coroutine[Any, Any, T]) -> T:
    # a real-time guard only against a hang; nothing here depends on wall-clock time
    return asyncio.run(asyncio.wait_for(coro, 60))


def fixed(n: int) -> dict[str, Any]:
    """Sampling for exactly n tokens."""
    return {"max_tokens": n, "ignore_eos": True, "temperature": 0.0}


def tokens(chunks: list[tuple[float, GenerateChunk]]) -> int:
    return sum(c.num_tokens for _, c in chunks)


# ---- tokens and finish reasons ---------------------------------------------------------


def test_ignore_eos_generates_max_tokens() -> None:
    s = make()
    chunks = run(s.collect(50, fixed(20), "a"))
    assert tokens(chunks) == 20
    assert [c.finish_reason for _, c in chunks] == [None] * 19 + ["length"]
    assert "".join(c.text for _, c in chunks) == TOKEN_TEXT * 20


def test_a_slow_consumer_gets_merged_deltas() -> None:
    s = make()

    async def main():
        chunks = []
        async for c in s.engine.generate([1] * 50, fixed(20), "a"):
            chunks.append(c)
            for _ in range(5):  # fall behind: the engine runs several iterations meanwhile
                await asyncio.sleep(0)
        return chunks

    chunks = run(main())
    assert sum(c.num_tokens for c in chunks) == 20 and len(chunks) < 20
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == "length"


def test_natural_length_ends_with_stop_and_max_tokens_with_length() -> None:
    s = make()
    natural = s.engine.natural_output_len("r1")
    stopped = run(s.collect(10, {"max_tokens": natural + 5}, "r1"))
    assert tokens(stopped) == natural and stopped[-1][1].finish_reason == "stop"
    # the same request id on another engine with the same seed ends at the same length
    assert make().engine.natural_output_len("r1") == natural
    if natural > 1:
        cut = run(make().collect(10, {"max_tokens": natural - 1}, "r1"))
        assert tokens(cut) == natural - 1 and cut[-1][1].finish_reason == "length"
    # min_tokens holds the end of sequence back; max_model_len cuts like max_tokens
    held = run(make().collect(10, {"max_tokens": natural + 10, "min_tokens": natural + 3}, "r1"))
    assert tokens(held) == natural + 3 and held[-1][1].finish_reason == "stop"
    capped = run(make(max_model_len=20).collect(15, {"max_tokens": None, "ignore_eos": True}, "r1"))
    assert tokens(capped) == 5 and capped[-1][1].finish_reason == "length"


def test_natural_lengths_follow_the_documented_distribution() -> None:
    engine = make().engine
    lengths = [engine.natural_output_len(f"req-{i}") for i in range(4000)]
    assert min(lengths) >= 1
    assert statistics.fmean(lengths) == pytest.approx(211, rel=0.08)  # LengthMix: mean 211, cv 1
    assert statistics.pstdev(lengths) / statistics.fmean(lengths) == pytest.approx(1.0, rel=0.25)
    other = make(seed=1).engine
    assert [other.natural_output_len(f"req-{i}") for i in range(50)] != lengths[:50]


# ---- the schedule ------------------------------------------------------------------------


def test_lone_request_follows_the_profile() -> None:
    s = make(TINY)
    n = 300
    chunks = run(s.collect(n, fixed(6), "a"))
    assert all(c.num_tokens == 1 for _, c in chunks)
    expected = [TINY.prefill_time_s([n])]
    for k in range(5):  # decode step k: batch of 1 holding the prompt and k generated tokens' KV
        expected.append(expected[-1] + TINY.decode_step_s(1, n + k))
    assert [t for t, _ in chunks] == pytest.approx(expected, rel=1e-12)


def test_concurrent_requests_batch_together() -> None:
    s = make(A100)

    async def main():
        snaps = []

        async def watch(n: int, rid: str):
            chunks = []
            async for c in s.engine.generate([1] * n, fixed(5), rid):
                chunks.append((s.clock.now, c))
                snaps.append((s.snapshot.running, s.snapshot.waiting))
            return chunks

        return await asyncio.gather(watch(100, "a"), watch(400, "b")), snaps

    (a, b), snaps = run(main())
    first = A100.prefill_time_s([100, 400])  # one prefill batch for both
    assert a[0][0] == pytest.approx(first) and b[0][0] == pytest.approx(first)
    times = [first]
    for k in range(4):  # both decode in one batch: 2 members, context grows by 2 per step
        times.append(times[-1] + A100.decode_step_s(2, 500 + 2 * k))
    assert [t for t, _ in a] == pytest.approx(times, rel=1e-12)
    assert [t for t, _ in b] == pytest.approx(times, rel=1e-12)
    assert set(snaps[:-2]) == {(2, 0)}
    assert s.snapshot.kv_blocks_total == A100.kv.num_blocks and s.snapshot.block_size == 16


def test_chunked_prefill_spreads_a_long_prompt() -> None:
    s = make(A100, chunked_prefill=True, max_num_batched_tokens=64)
    chunks = run(s.collect(100, fixed(3), "a"))
    # two chunks, 64 then 36 tokens; the second's attention covers the whole prefix
    first = A100.prefill.time_from_sums(64, 64**2, 1) + A100.prefill.time_from_sums(36, 100**2 - 64**2, 1)
    assert chunks[0][0] == pytest.approx(first, rel=1e-12)
    assert tokens(chunks) == 3 and chunks[-1][1].finish_reason == "length"


def test_schedule_is_the_simulators() -> None:
    """Step-by-step serving gives the times the simulator computes with runs of steps, KV
    pressure and preemption included."""
    prompts, outs = [300, 120, 500, 50], [200, 300, 100, 400]
    s = make(A100, max_model_len=1024, kv_capacity_tokens=1024, max_num_seqs=3)

    async def main():
        return await asyncio.gather(*(s.collect(n, fixed(o), str(i)) for i, (n, o) in enumerate(zip(prompts, outs))))

    served = run(main())
    profile = A100.model_copy(update={"max_model_len": 1024, "kv": s.engine._engine.profile.kv})
    state = WorkerState(id="w", profile=profile)
    sim = WorkerEngine(state, EngineOptions(max_num_seqs=3, chunked_prefill=False))  # the sim engine's default
    records = []
    for i, (n, o) in enumerate(zip(prompts, outs)):
        request = Request(str(i), 0.0, n, o, o, 1.0, 1.0, o)
        state.admit(request, 0.0)
        records.append(RequestRecord(request, o))
        sim.enqueue(records[-1])
    end = sim.start_next(0.0)
    while end is not None:
        sim.complete(end)
        end = sim.start_next(end)
    assert sim.preemptions > 0  # the case covers recompute
    for chunks, record in zip(served, records):
        assert tokens(chunks) == record.output_len
        assert chunks[0][0] == pytest.approx(record.first_token_s, rel=1e-9)
        assert chunks[-1][0] == pytest.approx(record.finish_s, rel=1e-9)


# ---- KV capacity and cancellation --------------------------------------------------------


def test_kv_capacity_limits_concurrency() -> None:
    # 40 blocks of 16 tokens: two 300-token prompts (19 blocks each) fit, the third waits
    s = make(A100, max_model_len=512, kv_capacity_tokens=640)

    async def main():
        seen = {}

        async def watch(rid: str):
            chunks = []
            async for c in s.engine.generate([1] * 300, fixed(10), rid):
                chunks.append((s.clock.now, c))
                seen.setdefault(rid, (s.snapshot.running, s.snapshot.waiting, s.snapshot.kv_usage))
            return chunks

        return await asyncio.gather(watch("a"), watch("b"), watch("c")), seen

    (a, b, c), seen = run(main())
    # while a and b decode their first step: 2 x blocks for 301 tokens (19) of 40
    assert seen["a"] == (2, 1, pytest.approx(38 / 40))
    assert s.snapshot.kv_blocks_total == 40
    assert a[-1][0] == b[-1][0]
    assert c[0][0] == pytest.approx(a[-1][0] + A100.prefill_time_s([300]), rel=1e-12)
    assert (s.snapshot.running, s.snapshot.waiting, s.snapshot.kv_usage) == (0, 0, 0.0)


def test_closing_a_stream_frees_its_slot() -> None:
    s = make(A100, max_num_seqs=1)

    async def main():
        a_times = []
        gen = s.engine.generate([1] * 200, fixed(1000), "a")
        b = asyncio.create_task(s.collect(100, fixed(2), "b"))
        async for _ in gen:
            a_times.append(s.clock.now)
            if len(a_times) == 1:
                assert (s.snapshot.running, s.snapshot.waiting) == (1, 1)
            if len(a_times) == 3:
                break
        await gen.aclose()
        return a_times, await b

    a_times, b = run(main())
    # the decode step running when a left still completes; then b is prefilled
    left = a_times[-1] + A100.decode_step_s(1, 202)
    assert b[0][0] == pytest.approx(left + A100.prefill_time_s([100]), rel=1e-12)
    assert tokens(b) == 2
    assert (s.snapshot.running, s.snapshot.waiting, s.snapshot.kv_usage) == (0, 0, 0.0)
    assert not s.engine._engine.state.residents


def test_cancelling_a_waiting_request_removes_it() -> None:
    s = make(A100, max_num_seqs=1)

    async def main():
        b = asyncio.create_task(s.collect(100, fixed(5), "b"))
        seen = []
        async for _ in s.engine.generate([1] * 100, fixed(6), "a"):
            seen.append((s.snapshot.running, s.snapshot.waiting))
            if len(seen) == 2:
                b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b
        return seen

    seen = run(main())
    assert seen[:2] == [(1, 1), (1, 1)] and set(seen[3:-1]) == {(1, 0)}
    assert not s.engine._engine.state.residents and not s.engine._engine.waiting


# ---- validation and lifecycle ------------------------------------------------------------


@pytest.mark.parametrize(
    "sampling",
    [
        {"max_tokens": 0},
        {"max_tokens": -1},
        {"max_tokens": "5"},
        {"max_tokens": 4, "min_tokens": 5},
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_k": -2},
        {"n": 2},
        {"presence_penalty": 3.0},
        {"ignore_eos": "yes"},
        {"stop": [1]},
        {"stop": 5},
        # what only a model can give is refused, not faked
        {"logprobs": 2},
        {"prompt_logprobs": 0},
        {"structured_outputs": {"json": {"type": "object"}}},
        {"logit_bias": {"5": 1.0}},
    ],
)
def test_invalid_sampling_raises(sampling: dict[str, Any]) -> None:
    s = make()

    async def main():
        with pytest.raises(ValueError):
            await anext(s.engine.generate([1] * 5, sampling, "a"))

    run(main())
    assert not s.engine._engine.state.residents


def test_invalid_prompts_and_duplicate_ids_raise() -> None:
    s = make(max_model_len=64)

    async def main():
        for prompt in ([], [1] * 64):
            with pytest.raises(ValueError):
                await anext(s.engine.generate(prompt, fixed(1), "x"))
        first = s.engine.generate([1] * 5, fixed(3), "a")
        await anext(first)
        with pytest.raises(ValueError, match="in use"):
            await anext(s.engine.generate([1] * 5, fixed(3), "a"))
        await first.aclose()

    run(main())


def test_unknown_and_ignored_sampling_fields_are_accepted() -> None:
    sampling = {**fixed(2), "stop": ["x"], "seed": 7, "top_k": 0, "logprobs": None, "something_new": 1}
    assert tokens(run(make().collect(5, sampling, "a"))) == 2


def test_kv_must_hold_one_max_model_len_request() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        make(A100, max_model_len=4096, kv_capacity_tokens=2048)


def test_shutdown_ends_streams_and_health() -> None:
    s = make()

    async def main():
        await s.engine.check_health()
        gen = s.engine.generate([1] * 5, fixed(100), "a")
        await anext(gen)
        s.engine.shutdown()
        with pytest.raises(SimEngineDeadError):
            async for _ in gen:
                pass
        with pytest.raises(SimEngineDeadError):
            await s.engine.check_health()
        with pytest.raises(SimEngineDeadError):
            await anext(s.engine.generate([1] * 5, fixed(1), "b"))

    run(main())


def test_imports_neither_vllm_nor_torch() -> None:
    code = (
        "import sys, serve_app.worker.sim_engine; "
        "bad = [m for m in ('vllm', 'torch', 'ray') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_prefill_progress_hands_chunk_tokens_out_in_scheduling_order():
    from serve_app.worker.engine_snapshot import PrefillProgress

    progress = PrefillProgress()
    progress.add("long", 8192)
    progress.add("short", 100)
    # a 2048-token budget: all of it goes to the oldest prompt, chunk after chunk
    assert progress.chunks(1, 2048) == 2048**2
    assert progress.chunks(1, 2048) == 4096**2 - 2048**2
    # its last 4096 tokens, then the next prompt's first 100 in one iteration
    assert progress.chunks(2, 4196) == (8192**2 - 4096**2) + 100**2
    progress.done("long")
    progress.done("short")
    assert progress.chunks(1, 10) == 0.0  # nothing tracked (a recompute): no work counted
    # in all, a prompt's chunks add up to its L^2, whatever the chunk size
    progress.add("p", 5000)
    assert sum(progress.chunks(1, t) for t in (1000, 1000, 3000)) == 5000**2


def test_an_iteration_is_busy_from_the_previous_one_while_the_engine_had_requests_left():
    """vLLM times the model only; the time between iterations of a busy engine (scheduling,
    output processing) is spent between a request's tokens too, so it counts as busy. An
    iteration after an idle spell counts its own timing only, and never less."""
    snap = Snapshot()
    assert snap.iteration_busy_s(10.0, 0.004, work_left=True) == 0.004  # the first one
    assert snap.iteration_busy_s(10.006, 0.004, work_left=True) == pytest.approx(0.006)
    assert snap.iteration_busy_s(10.009, 0.004, work_left=False) == 0.004  # handled early
    assert snap.iteration_busy_s(15.0, 0.005, work_left=True) == 0.005  # after idling
    assert snap.iteration_busy_s(15.007, 0.005, work_left=True) == pytest.approx(0.007)
