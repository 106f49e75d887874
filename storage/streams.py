"""A blocking iterator of blocks (an object read, an assembled package) run on a thread of its own.

The thread reads up to ``depth`` blocks ahead, so the storage reads overlap with what the consumer
does with each block (hashing it, sending it). ``tap`` (a hash update) runs on that thread, before
the block is handed on. The consumer may be ordinary code (``for block in ...``) or a coroutine
(``async for block in ...``): Starlette would otherwise make a round trip to its worker pool for
every block of a download, which costs about a tenth of the throughput on two cores. When the
consumer stops early (the client went away, an error), the thread stops and closes ``blocks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import cast

_END = object()


class BlocksOnThread:
    """Iterate (or async-iterate, once) over ``blocks`` read on a thread of its own."""

    def __init__(
        self,
        blocks: Iterator[bytes],
        depth: int = 2,
        tap: Callable[[bytes], None] | None = None,
        name: str = "blocks-on-thread",
    ) -> None:
        self.blocks = blocks
        self.depth = depth
        self.tap = tap
        self.name = name
        self._room = threading.Semaphore(depth)
        self._stop = threading.Event()

    def _pump(self, hand_over: Callable[[object], None]) -> None:
        try:
            for block in self.blocks:
                if self.tap is not None:
                    self.tap(block)
                while not self._room.acquire(timeout=0.5):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                hand_over(block)
            hand_over(_END)
        except BaseException as exc:  # noqa: BLE001 - raised again where the blocks are consumed
            hand_over(exc)
        finally:
            close = getattr(self.blocks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def __iter__(self) -> Iterator[bytes]:
        ready: queue.Queue[object] = queue.Queue()
        thread = threading.Thread(target=self._pump, args=(ready.put,), name=self.name, daemon=True)
        thread.start()
        try:
            while True:
                got = ready.get()
                self._room.release()
                if got is _END:
                    return
                if isinstance(got, BaseException):
                    raise got
                yield cast(bytes, got)
        finally:
            self._stop.set()
            self._room.release()
            thread.join()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[object] = asyncio.Queue()

        def hand_over(got: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to receive
                loop.call_soon_threadsafe(ready.put_nowait, got)

        threading.Thread(target=self._pump, args=(hand_over,), name=self.name, daemon=True).start()
        try:
            while True:
                got = await ready.get()
                self._room.release()
                if got is _END:
                    return
                if isinstance(got, BaseException):
                    raise got
                yield cast(bytes, got)
        finally:
            self._stop.set()
            self._room.release()


def blocks_in_thread(
    blocks: Iterator[bytes], depth: int = 2, name: str = "download-blocks"
) -> AsyncIterator[bytes]:
    """A download's body: ``blocks`` read on a thread of its own, consumed by the event loop."""
    return BlocksOnThread(blocks, depth, name=name).__aiter__()
