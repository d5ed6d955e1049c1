"""A client that opens a connection and trickles the bytes of its request head (slow loris) is
cut off within `api.app.REQUEST_HEAD_S_MAX` of opening (issue 24 #11); before, aiohttp held it for
its keep-alive default of an hour. Against the API as production serves it (`api.app.serve`),
through a raw socket. The bound is shortened for the test; the mechanism is the one in use."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from api import app as api_app
from tests.plugins.helpers import eventually
from tools.embedded import free_port

HEAD_S_MAX = 1.0  # the test's bound; production's is api.app.REQUEST_HEAD_S_MAX
TRICKLE_S = 0.2  # one byte this often: the connection is never idle for long
SLACK_S = 5.0  # the server's own timer is coarse (aiohttp rounds it up), and the machine is shared


@contextlib.asynccontextmanager
async def _serving(stack, monkeypatch):
    monkeypatch.setattr(api_app, "REQUEST_HEAD_S_MAX", HEAD_S_MAX)
    settings = stack.settings.replace(http={"port": free_port(), "metrics_port": None})
    server = asyncio.create_task(api_app.serve(settings), name="test-api-serve")
    try:
        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection(settings.http.host, settings.http.port)
            except OSError:
                return False
            writer.close()
            return True

        await eventually(listening, what="the API listening")
        yield settings
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


async def _trickle(writer: asyncio.StreamWriter, head: bytes) -> None:
    for byte in head:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(TRICKLE_S)  # the pace of the attack under test, not a wait for anything


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_a_request_head_trickled_byte_by_byte_is_cut_off_within_the_bound(stack, monkeypatch):
    async with _serving(stack, monkeypatch) as settings:
        reader, writer = await asyncio.open_connection(settings.http.host, settings.http.port)
        started = asyncio.get_running_loop().time()
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 1000
        trickling = asyncio.create_task(_trickle(writer, head))
        try:
            async with asyncio.timeout(HEAD_S_MAX + SLACK_S):
                assert await reader.read() == b""  # closed by the server, no answer
        finally:
            trickling.cancel()
            await asyncio.gather(trickling, return_exceptions=True)
            writer.close()
        assert asyncio.get_running_loop().time() - started <= HEAD_S_MAX + SLACK_S


async def test_a_request_sent_at_once_is_answered(stack, monkeypatch):
    async with _serving(stack, monkeypatch) as settings:
        reader, writer = await asyncio.open_connection(settings.http.host, settings.http.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(SLACK_S):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
