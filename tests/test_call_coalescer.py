"""CallCoalescer: concurrent calls ride together; each caller gets its own result or error."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.scheduler.call_coalescer import CallCoalescer


class _Actor:
    """A batch endpoint whose calls can be held open, recording the batches it got."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def send(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("actor gone")
        return [10 * i for i in items]


def test_calls_alone_go_alone_and_concurrent_ones_go_together() -> None:
    async def scenario() -> None:
        actor = _Actor()
        coalescer = CallCoalescer(actor.send)
        assert [await coalescer.call(i) for i in range(3)] == [0, 10, 20]
        assert actor.batches == [[0], [1], [2]]
        actor.gate.clear()
        first = asyncio.ensure_future(coalescer.call(100))
        await asyncio.sleep(0)  # the first batch is on its way
        rest = [asyncio.ensure_future(coalescer.call(i)) for i in range(10)]
        await asyncio.sleep(0)
        actor.gate.set()
        assert await first == 1000 and await asyncio.gather(*rest) == [10 * i for i in range(10)]
        assert actor.batches[3:] == [[100], list(range(10))]
        assert (coalescer.calls, coalescer.items) == (5, 14)

    asyncio.run(scenario())


def test_a_linger_gathers_calls_that_arrive_a_little_apart_into_one_batch() -> None:
    async def scenario() -> None:
        actor = _Actor()
        coalescer = CallCoalescer(actor.send, linger_s=0.05)
        calls = []
        for i in range(4):  # 10 ms apart: without the linger the first would go alone
            calls.append(asyncio.ensure_future(coalescer.call(i)))
            await asyncio.sleep(0.01)
        assert await asyncio.gather(*calls) == [0, 10, 20, 30]
        assert actor.batches == [[0, 1, 2, 3]]
        assert await coalescer.call(7) == 70  # a later quiet spell: lingers again, then goes
        assert actor.batches[1:] == [[7]]
        with pytest.raises(ValueError, match="linger_s"):
            CallCoalescer(actor.send, linger_s=-1)

    asyncio.run(scenario())


def test_a_caller_that_gives_up_leaves_the_others_their_results() -> None:
    async def scenario() -> None:
        actor = _Actor()
        coalescer = CallCoalescer(actor.send)
        actor.gate.clear()
        first = asyncio.ensure_future(coalescer.call(1))
        await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(coalescer.call(i)) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        waiting[1].cancel()  # e.g. its wait_for timed out
        actor.gate.set()
        assert await first == 10
        assert await waiting[0] == 20 and await waiting[2] == 40
        assert waiting[1].cancelled()

    asyncio.run(scenario())


def test_a_failed_batch_fails_its_callers_and_the_next_batch_is_sent() -> None:
    async def scenario() -> None:
        actor = _Actor()
        coalescer = CallCoalescer(actor.send)
        actor.fail_next = True
        actor.gate.clear()
        failing = [asyncio.ensure_future(coalescer.call(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        actor.gate.set()
        for call in failing:
            with pytest.raises(ConnectionError):
                await call
        assert await coalescer.call(5) == 50

    asyncio.run(scenario())


def test_batches_are_bounded_and_result_counts_checked() -> None:
    async def scenario() -> None:
        actor = _Actor()
        coalescer = CallCoalescer(actor.send, max_batch=4)
        actor.gate.clear()
        calls = [asyncio.ensure_future(coalescer.call(i)) for i in range(10)]
        await asyncio.sleep(0)
        actor.gate.set()
        assert await asyncio.gather(*calls) == [10 * i for i in range(10)]
        assert [len(b) for b in actor.batches] == [4, 4, 2]

        async def short(items: list[int]) -> list[int]:
            return items[:-1]

        with pytest.raises(RuntimeError, match="got 0 results"):
            await CallCoalescer(short).call(1)

    asyncio.run(scenario())
    with pytest.raises(ValueError):
        CallCoalescer(_Actor().send, max_batch=0)


def test_a_caller_cancelled_as_its_batch_answers_stays_cancelled() -> None:
    """The bench hang in CI: Python 3.11's `asyncio.wait_for` returns the result instead of
    raising when the cancellation meets a call that has just finished, so a cancelled caller
    loop ran on for ever. PlacementShards' bounded calls must let the cancellation through."""
    from placement.live import RunningRequest
    from serve_app.scheduler.placement_shards import PlacementShards

    async def scenario() -> None:
        shards = PlacementShards("app", {})
        answered = asyncio.get_running_loop().create_future()

        async def call() -> str:
            return await answered

        shards._actors[0] = object()  # the handle the call goes to (never called here)
        request = RunningRequest("r", 0.0, 8, 4.0, 8.0, 1.0, 0.05)
        caller = asyncio.ensure_future(shards._bounded(0, request, call))
        for _ in range(3):
            await asyncio.sleep(0)  # the caller waits on its call
        answered.set_result("w0")  # the call finishes in the loop turn that cancels its caller
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(scenario())


def test_a_timed_out_call_tells_its_shard_to_drop_what_it_may_still_do() -> None:
    """The shard answering after the caller gave up would keep a reservation the request never
    uses; the caller sends `abandon` for it, to the handle the call went to, and forgets it."""
    from placement.live import RunningRequest
    from serve_app.scheduler.placement_shards import PlacementShards

    class _Method:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def remote(self, *args: object) -> None:
            self.calls.append(args)

    class _SlowActor:  # a Ray actor handle's shape: an answer that never comes
        def __init__(self) -> None:
            self.abandon = _Method()

    async def scenario() -> None:
        shards = PlacementShards("app", {"placement": {"actor_timeout_s": 0.01}})
        actor = _SlowActor()
        shards._actors[0] = actor
        request = RunningRequest("r", 0.0, 8, 4.0, 8.0, 1.0, 0.05)
        with pytest.raises(TimeoutError):
            await shards._bounded(0, request, lambda: asyncio.sleep(10))
        assert actor.abandon.calls == [(["r"],)] and 0 not in shards._actors
        with pytest.raises(ConnectionError):  # a failed call: forgotten, nothing to abandon
            shards._actors[0] = actor
            await shards._bounded(0, request, lambda: _raise(ConnectionError("gone")))
        assert actor.abandon.calls == [(["r"],)] and 0 not in shards._actors
        # calls timing out together: each abandons its own, though the first forgets the handle
        shards._actors[0] = actor
        many = [RunningRequest(f"m{i}", 0.0, 8, 4.0, 8.0, 1.0, 0.05) for i in range(4)]
        outcomes = await asyncio.gather(*(shards._bounded(0, r, lambda: asyncio.sleep(10)) for r in many),
                                        return_exceptions=True)
        assert all(isinstance(o, TimeoutError) for o in outcomes)
        assert sorted(args[0][0] for args in actor.abandon.calls[1:]) == ["m0", "m1", "m2", "m3"]

    async def _raise(exc: Exception) -> None:
        raise exc

    asyncio.run(scenario())
