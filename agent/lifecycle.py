"""One lifecycle for the pipeline's stages: `async start()`, `async stop()`.

The acquirer, the publisher and the HTTP server are `Component`s themselves; the history
store (a writer thread with a synchronous `start()`/`close(timeout_s)`) and the control
runner (a coroutine `run()` ended by `stop()`) are made components by the two adapters
below, so a test or a tool can start any stage the same way and `async with` it.  The
kernel is not a component: it runs inside the acquirer's frame callback and holds no task,
thread or connection.

`agent.service.Pipeline` still starts and stops the stages itself, in data order and
within one shared deadline (each stage gets its own share, the publisher a drain time,
a reload keeps the parts the new pipeline carries): a generic reverse-order stop would
lose those budgets, so it does not use a list of components.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, Self, runtime_checkable


@runtime_checkable
class Component(Protocol):
    """A pipeline stage: `start()` returns once it runs (its work goes on in tasks or a
    thread), `stop()` ends that work and releases what it holds; both may be called twice."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class AsyncContext:
    """`async with` for a `Component`: start on entry, stop on exit (also on an error)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Threaded(AsyncContext):
    """A component around a thread-backed part with synchronous `start()` and
    `close(timeout_s)` (the history store): the close, which joins the thread, runs off the
    event loop."""

    def __init__(self, part: Any, close_timeout_s: float = 5.0) -> None:
        self.part = part
        self.close_timeout_s = close_timeout_s

    async def start(self) -> None:
        self.part.start()  # starts a thread and returns: never blocks the loop

    async def stop(self) -> None:
        await asyncio.to_thread(self.part.close, self.close_timeout_s)


class Supervised(AsyncContext):
    """A component around a part whose work is one coroutine `run()` that ends after its
    `stop()` (the control runner): `start()` runs it as a task, `stop()` asks it to end and
    waits up to `stop_timeout_s` before cancelling it.  An exception `run()` raised is
    raised again by `stop()`, never lost with the task."""

    def __init__(
        self,
        run: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
        name: str,
        stop_timeout_s: float = 1.0,
    ) -> None:
        self._run, self._stop, self.name = run, stop, name
        self.stop_timeout_s = stop_timeout_s
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._main(), name=self.name)

    async def _main(self) -> None:
        await self._run()

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        await self._stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.stop_timeout_s):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        if not task.cancelled():
            task.result()  # a crash of run() surfaces here
