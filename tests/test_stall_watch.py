"""Waiting for a request body's chunks with one timer a stall period (``ingest.stall_watch``): a body
that stops arriving is ended after the period, one that keeps coming is not, however long it takes,
and a cancel from outside is not taken for a stall."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ingest.stall_watch import StallWatch


async def _chunks(n: int, pause: float = 0.0) -> AsyncIterator[bytes]:
    for _ in range(n):
        await asyncio.sleep(pause)
        yield b"x" * 1024


def _counting(loop: asyncio.AbstractEventLoop) -> dict[str, int]:
    """Timers set and tasks made on ``loop`` from now on."""
    made = {"timers": 0, "tasks": 0}
    call_at = loop.call_at

    def counted_call_at(when: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        made["timers"] += 1
        return call_at(when, callback, *args, **kw)

    def task(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        made["tasks"] += 1
        return asyncio.Task(coro, loop=loop, **kw)

    loop.call_at = counted_call_at  # type: ignore[method-assign]
    loop.set_task_factory(task)  # type: ignore[arg-type]
    return made


def test_a_thousand_chunks_take_one_timer_and_no_task() -> None:
    async def main() -> tuple[int, dict[str, int]]:
        made = _counting(asyncio.get_running_loop())
        watch = StallWatch(30)
        got = 0
        chunks = _chunks(1000).__aiter__()
        while (chunk := await watch.next(chunks)) is not None:
            got += len(chunk)
        watch.close()
        return got, dict(made)  # before asyncio.run's own shutdown tasks

    got, made = asyncio.run(main())
    assert got == 1000 * 1024
    assert made == {"timers": 1, "tasks": 0}  # asyncio.wait_for: a thousand of each


def test_a_body_that_stops_is_ended_after_the_period() -> None:
    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        watch = StallWatch(0.2)
        chunks = _chunks(3, pause=0).__aiter__()
        got = 0
        while await watch.next(chunks) is not None:
            got += 1
        stopped = asyncio.Event()  # a body whose next bytes never come

        async def never() -> AsyncIterator[bytes]:
            await stopped.wait()
            yield b""

        started = loop.time()
        with pytest.raises(TimeoutError):
            await watch.next(never().__aiter__())
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the task goes on as if never cancelled
        return got, loop.time() - started

    got, waited = asyncio.run(main())
    assert got == 3
    assert 0.15 <= waited < 5


def test_a_slow_body_whose_every_wait_is_short_is_not_ended() -> None:
    async def main() -> int:
        watch = StallWatch(0.2)
        chunks = _chunks(10, pause=0.05).__aiter__()  # half a second in all, 50 ms a chunk
        got = 0
        while await watch.next(chunks) is not None:
            got += 1
            await asyncio.sleep(0.25)  # the service busy between reads: not the body's stall
        watch.close()
        return got

    assert asyncio.run(main()) == 10


def test_a_cancel_from_outside_is_a_cancel() -> None:
    async def main() -> None:
        async def reader() -> None:
            watch = StallWatch(30)
            stopped = asyncio.Event()

            async def never() -> AsyncIterator[bytes]:
                await stopped.wait()
                yield b""

            await watch.next(never().__aiter__())

        task = asyncio.create_task(reader())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
