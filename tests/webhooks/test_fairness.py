"""One vendor cannot starve the others' webhooks, and under a backlog the oldest rows go first
(issue 24 #4).

Receivers are aiohttp servers on 127.0.0.1 that the tests start; a slow one takes each POST and
holds it until the test lets it go (or the sender's attempt timeout ends it). The worker
(`webhooks.worker.serve`) runs in the test's event loop.
"""

from __future__ import annotations

import pytest
import asyncio
import json
import time

import pytest_asyncio
from aiohttp import web

from tests.conftest import eventually
from tools.embedded import free_port
from webhooks import events
from webhooks import worker as webhook_worker

FAIR_DELIVERY_S_MAX = 5.0  # the contract's first attempt within 5 s, while another vendor's receivers hang
HOLD_S_MAX = 30.0  # a held POST is let go after this at the latest, whatever the test does
SETTLE_S_MAX = 30.0
SLOW_SERVERS = 4
NEWER_PAYMENTS = 8
SLOW_PAYMENTS = 10  # each an event for all 16 endpoints: more rows than the worker holds (128)


class Receiver:
    """Answers 200 on any path, after `delay_s` and once `gate` is open; records the order in
    which the POSTs arrived (the `position` of each event) and how many it holds now."""

    def __init__(self, *, gate: asyncio.Event | None = None, delay_s: float = 0.0) -> None:
        self.gate = gate
        self.delay_s = delay_s
        self.positions: list[int] = []
        self.arrived_at: list[float] = []
        self.holding = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.positions.append(json.loads(await request.read())["position"])
        self.arrived_at.append(time.monotonic())
        self.holding += 1
        try:
            if self.gate is not None:
                await asyncio.wait_for(self.gate.wait(), HOLD_S_MAX)
            await asyncio.sleep(self.delay_s)  # the receiver's own work, not a wait for anything
            return web.Response(status=200, text="ok")
        finally:
            self.holding -= 1

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/{path}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest_asyncio.fixture
async def receivers():
    started: list[Receiver] = []

    async def make(**kw) -> Receiver:
        started.append(await Receiver(**kw).start())
        return started[-1]

    yield make
    for receiver in started:
        if receiver.gate is not None:
            receiver.gate.set()
        await receiver.stop()


@pytest_asyncio.fixture
async def start_worker(stack):
    """Start a worker with these settings changed; it is stopped at the end of the test."""
    tasks: list[asyncio.Task] = []

    async def start(**changed) -> None:
        settings = stack.settings.replace(**changed)
        tasks.append(asyncio.create_task(webhook_worker.serve(settings), name="test-webhook-worker"))

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _register(stack, vendor, url: str) -> str:
    reply = await stack.client.post(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token,
                                    json={"url": url})
    assert reply.status == 201, reply.text
    return reply.body["id"]


async def _delete_endpoints(stack, vendor, endpoint_ids: list[str]) -> None:
    """So that no later test's worker attempts their rows again."""
    for endpoint_id in endpoint_ids:
        reply = await stack.client.request("DELETE", f"/v1/vendors/{vendor.account_id}/webhooks/{endpoint_id}",
                                           token=vendor.token)
        assert reply.status == 204, reply.text


async def _payments(stack, vendor, count: int, payer=None) -> list[int]:
    """`count` payments to `vendor`, one after the other: their journal positions."""
    payer = payer or await stack.funded_wallet(10_000)
    positions = []
    for _ in range(count):
        reply = await stack.transfer(payer.token, payer.account_id, vendor.account_id, 1)
        assert reply.status == 201, reply.text
        positions.append(reply.body["position"])
    return positions


async def _mapped(stack, position: int) -> bool:
    async with await stack.superuser() as conn:
        row = await (await conn.execute("SELECT position FROM webhook_checkpoint WHERE name = %s",
                                        (webhook_worker.WORKER_NAME,))).fetchone()
    return row is not None and row[0] >= position


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_a_vendor_whose_receivers_hang_does_not_delay_another_vendors_events(stack, receivers, start_worker):
    await start_worker()
    settings = stack.settings
    gate = asyncio.Event()  # never opened while the test runs: every slow POST hangs
    slow = [await receivers(gate=gate) for _ in range(SLOW_SERVERS)]
    slow_vendor, vendor = await stack.vendor(), await stack.vendor()
    per_server = events.ENDPOINTS_PER_VENDOR_MAX // SLOW_SERVERS
    slow_endpoints = [await _register(stack, slow_vendor, receiver.url(f"hook{n}"))
                      for receiver in slow for n in range(per_server)]
    healthy = await receivers()
    await _register(stack, vendor, healthy.url())
    try:
        positions = await _payments(stack, slow_vendor, SLOW_PAYMENTS)

        async def hanging():  # the slow vendor's rows are mapped and hold their share of the slots
            holding = sum(receiver.holding for receiver in slow)
            return await _mapped(stack, positions[-1]) and holding >= settings.webhooks.concurrency_max // 2

        await eventually(hanging, timeout_s=SETTLE_S_MAX, what="the slow vendor's POSTs hanging")
        [paid] = await _payments(stack, vendor, 1)
        paid_at = time.monotonic()

        async def delivered():
            return paid in healthy.positions

        await eventually(delivered, timeout_s=FAIR_DELIVERY_S_MAX, what="the other vendor's event delivered")
        assert healthy.arrived_at[healthy.positions.index(paid)] - paid_at < FAIR_DELIVERY_S_MAX
        assert sum(receiver.holding for receiver in slow) <= settings.webhooks.concurrency_max
    finally:
        await _delete_endpoints(stack, slow_vendor, slow_endpoints)


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_under_a_backlog_an_endpoints_oldest_rows_are_sent_first(stack, receivers, start_worker):
    # One slot for the endpoint (two rows held), so the order of the POSTs is the order of sending.
    await start_worker(webhooks={"concurrency_max": 4, "endpoint_concurrency_max": 1})
    gate = asyncio.Event()
    receiver = await receivers(gate=gate, delay_s=0.1)
    vendor, payer = await stack.vendor(), await stack.funded_wallet(10_000)
    endpoint = await _register(stack, vendor, receiver.url())
    try:
        backlog = await _payments(stack, vendor, 6, payer)  # two held by the sender, four written due

        async def stuck():
            return receiver.holding == 1 and await _mapped(stack, backlog[-1])

        await eventually(stuck, timeout_s=SETTLE_S_MAX, what="the backlog written")
        gate.set()
        newer = []
        for _ in range(NEWER_PAYMENTS):  # a new payment each time the receiver takes one: a steady load
            taken = len(receiver.positions)
            newer += await _payments(stack, vendor, 1, payer)

            async def took_another():
                return len(receiver.positions) > taken

            await eventually(took_another, timeout_s=SETTLE_S_MAX, what="the receiver taking the next POST")

        async def all_arrived():
            return set(backlog + newer) <= set(receiver.positions)

        await eventually(all_arrived, timeout_s=SETTLE_S_MAX * 2, what="every event delivered")
        first_arrivals = list(dict.fromkeys(receiver.positions))
        assert first_arrivals == sorted(first_arrivals), first_arrivals
    finally:
        await _delete_endpoints(stack, vendor, [endpoint])
