"""Download bodies streamed from a thread of their own (``storage.streams.blocks_in_thread``):
blocks arrive in order, errors reach the response, and a response that ends early stops the thread
and closes the source, so its storage reads and connections are released."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from incidents.export.media import PackageAltered
from storage.streams import blocks_in_thread
from tests.conftest import free_port, wait_for


class Source:
    """A block iterator that records how far it was read and whether it was closed."""

    def __init__(self, blocks: int | None, fail_after: int | None = None) -> None:
        self.blocks = blocks
        self.fail_after = fail_after
        self.produced = 0
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        try:
            while self.blocks is None or self.produced < self.blocks:
                if self.fail_after is not None and self.produced == self.fail_after:
                    raise PackageAltered("stored object of evidence item x hashes to BLAKE3 00")
                self.produced += 1
                yield self.produced.to_bytes(4, "big") * 16384
        finally:
            self.closed.set()


def pump_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "download-blocks"]


def test_blocks_arrive_in_order_and_the_source_is_closed() -> None:
    source = Source(40)

    async def read() -> list[bytes]:
        return [b async for b in blocks_in_thread(iter(source))]

    got = asyncio.run(read())
    assert got == [(i + 1).to_bytes(4, "big") * 16384 for i in range(40)]
    assert source.closed.wait(5)


def test_an_error_in_the_source_reaches_the_response() -> None:
    source = Source(None, fail_after=3)

    async def read() -> int:
        n = 0
        with pytest.raises(PackageAltered, match="hashes to BLAKE3"):
            async for _ in blocks_in_thread(iter(source)):
                n += 1
        return n

    assert asyncio.run(read()) == 3
    assert source.closed.wait(5)


def test_a_response_closed_early_stops_the_thread_and_the_source() -> None:
    source = Source(None)

    async def read() -> None:
        blocks = blocks_in_thread(iter(source), depth=2)
        for _ in range(3):
            await blocks.__anext__()
        await blocks.aclose()

    asyncio.run(read())
    assert source.closed.wait(5), "the source was never closed"
    wait_for(lambda: not pump_threads(), 5, what="the streaming thread to end")
    assert source.produced <= 3 + 2 + 1  # read, queued (depth), and the one in hand


def test_a_client_that_goes_away_stops_the_thread_and_the_source() -> None:
    """Over real HTTP: the client reads a few blocks of an endless body and disconnects."""
    source = Source(None)

    async def endless(request: Request) -> StreamingResponse:
        return StreamingResponse(blocks_in_thread(iter(source)), media_type="application/zip")

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(Starlette(routes=[Route("/", endless)]), host="127.0.0.1", port=port, log_config=None)
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20, what="HTTP server to start")
        with httpx.stream("GET", f"http://127.0.0.1:{port}/") as resp:
            got = 0
            for block in resp.iter_bytes():
                got += len(block)
                if got > 1_000_000:
                    break
        assert source.closed.wait(10), "the source was never closed after the client went away"
        wait_for(lambda: not pump_threads(), 10, what="the streaming thread to end")
        assert source.produced < 10_000  # stopped, not read to exhaustion
    finally:
        server.should_exit = True
        thread.join(15)
