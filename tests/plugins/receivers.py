"""Webhook receivers: aiohttp servers on 127.0.0.1 that the tests start, answering as told and
recording every request, and the `receivers` fixture that stops them after the test."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest_asyncio
from aiohttp import web

from tools.embedded import free_port


@dataclasses.dataclass
class Received:
    headers: dict
    body: bytes
    at: float


class Receiver:
    """A webhook receiver on loopback that answers `status` after `delay_s` and records every request."""

    def __init__(self, *, status: int = 200, delay_s: float = 0.0) -> None:
        self.status = status
        self.delay_s = delay_s
        self.requests: list[Received] = []
        self.active = self.active_max = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        # The same server, answering at once: another endpoint on the same host.
        self.prompt_url = f"http://127.0.0.1:{self.port}/prompt"
        self.prompt_requests: list[Received] = []
        self._runner: web.AppRunner | None = None

    async def _handle_prompt(self, request: web.Request) -> web.Response:
        self.prompt_requests.append(Received(dict(request.headers), await request.read(), time.monotonic()))
        return web.Response(status=200, text="ok")

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(dict(request.headers), await request.read(), time.monotonic()))
        self.active += 1
        self.active_max = max(self.active_max, self.active)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return web.Response(status=self.status, text="ok")
        finally:
            self.active -= 1

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        app.router.add_post("/prompt", self._handle_prompt)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def events(self) -> list[dict]:
        return [json.loads(r.body) for r in self.requests]


@pytest_asyncio.fixture
async def receivers():
    started: list[Receiver] = []

    async def make(**kw) -> Receiver:
        started.append(await Receiver(**kw).start())
        return started[-1]

    yield make
    for receiver in started:
        await receiver.stop()
