"""Coalesce concurrent calls of one kind into batched calls: while a batch is on its way, the
calls that arrive wait and go together in the next one.

The placement actor pays Ray's per-call overhead (a task, its arguments and its reply
serialized, a turn of its event loop) once per call, not per request. At light load every call
goes alone, so no latency is added; under load the batch grows by itself to what arrived
during one round trip (Nagle's rule without a timer). `linger_s` > 0 holds the first call of
a quiet spell that long before sending it, for callers that arrive together but not at once
(the workers of one node reporting on the same tick: serve_app.scheduler.heartbeat_relay). A
caller that gives up (its task is cancelled, e.g. by a timeout) leaves its batch unaffected. A
failed batch call fails each of its callers with the same exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class CallCoalescer(Generic[T, R]):
    """Calls `send(items)` (one result per item, in order) with the items of concurrent `call`s."""

    def __init__(self, send: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch: int = 256,
                 linger_s: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if linger_s < 0:
            raise ValueError("linger_s must be >= 0")
        self._send = send
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._pump: asyncio.Task | None = None
        self.calls = 0  # batch calls sent
        self.items = 0  # items they carried

    async def call(self, item: T) -> R:
        """`item`'s result, from whichever batch carries it."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._send_pending())
        return await future

    async def _send_pending(self) -> None:
        if self._linger_s:
            await asyncio.sleep(self._linger_s)
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            batch = [(item, future) for item, future in batch if not future.done()]  # callers gone
            if not batch:
                continue
            self.calls += 1
            self.items += len(batch)
            try:
                results = await self._send([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} calls got {len(results)} results")
            except Exception as exc:  # every caller of the batch sees the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
