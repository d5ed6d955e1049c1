"""No 201 that a failover can take back (issue 24 #2), on the replication harness (`tools/replication.py`).

A COMMIT whose wait for the synchronous standby is cancelled is answered 503 "retry with the same
key", yet the entry is visible on the primary. The retry must not turn it into a 201 (a replay
waits for the standby like a write: that part held already, the replay's head row lock is
WAL-logged), and no journal follower may act on it (no projection, no webhook delivery, no tree
head signed over it) while the standby lacks it: that part failed before `ledger.standby`. Then
the standby that lacks it is promoted: every answered payment is still there, and the retry is
decided afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import aiohttp
import psycopg
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from api.app import build_app
from cli import processes
from ledger import db, principals
from ledger.config import Settings
from tests.conftest import eventually
from tests.plugins.stack import WEBHOOK_KEY, Client, Stack
from tools.embedded import EmbeddedNats, free_port
from tools.replication import PostgresPair
from webhooks import worker as webhook_worker

pytestmark = pytest.mark.slow

WAIT_S_MAX = 60.0  # generous: two PostgreSQL nodes, NATS and every service share two cores
# The followers as `ledger_follower_standby_unconfirmed_total` names them (the default settings').
FOLLOWERS = ("projector main", "tree follower", "webhook mapper main")


class Receiver:
    """A webhook receiver on loopback that records every event it is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.events: list[dict] = []

    async def _handle(self, request: web.Request) -> web.Response:
        self.events.append(json.loads(await request.read()))
        return web.Response(text="ok")

    @contextlib.asynccontextmanager
    async def running(self):
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()

    def transfer_ids(self) -> set[str]:
        return {event["data"].get("transfer_id") for event in self.events}


@contextlib.asynccontextmanager
async def services(pair: PostgresPair, nats: EmbeddedNats, tmp_path):
    """The API, the projector process (read models and the tree follower, signing every second) and
    the webhook worker, in this event loop, on the pair's multi-host URL."""
    await db.migrate(pair.url)
    settings = Settings().replace(database={"url": pair.url}, nats={"url": nats.url}, http={"port": free_port()},
                                  webhooks={"key": WEBHOOK_KEY, "allow_private": True},
                                  proofs={"sign_interval_s": 1, "signing_key": str(tmp_path / "signing-key.pem")},
                                  committer={"outbox_sweep_interval_ms": 200})
    app = build_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.http.host, settings.http.port).start()
    tasks = [asyncio.create_task(processes.projector(settings), name="test-projector"),
             asyncio.create_task(webhook_worker.serve(settings), name="test-webhook-worker")]
    _, admin = await principals.create_at(pair.url, role="admin", name="test admin")
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, f"http://{settings.http.host}:{settings.http.port}")
            yield Stack(settings, client, admin, pair.url, pair, nats, app)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()


async def cancel_standby_waits(conn) -> int:
    """What an operator's pg_cancel_backend does to every COMMIT waiting for the standby."""
    row = await (await conn.execute(
        "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")).fetchone()
    return row[0]


def held_back(follower: str) -> float:
    return REGISTRY.get_sample_value("ledger_follower_standby_unconfirmed_total", {"follower": follower}) or 0.0


async def answered_after_cancelling(conn, request: asyncio.Task):
    """Cancel the standby waits until `request` is answered (it may wait for the standby)."""
    async def answered() -> bool:
        await cancel_standby_waits(conn)
        return request.done()

    await eventually(answered, timeout_s=WAIT_S_MAX, what="an answer")
    return request.result()


async def one(conn, query: str, *params):
    return (await (await conn.execute(query, params)).fetchone())[0]


async def shown(conn, receiver: Receiver, position: int) -> dict[str, bool]:
    """Which followers show the entry at `position` (or later)."""
    return {
        "projected": await one(conn, "SELECT count(*) FROM verifications WHERE position >= %s", position) > 0,
        "projector cursor": await one(conn, "SELECT max(position) FROM projector_checkpoint") >= position,
        "delivery row": await one(conn, "SELECT count(*) FROM webhook_deliveries WHERE position >= %s", position) > 0,
        "webhook sent": any(event["position"] >= position for event in receiver.events),
        "in the tree": await one(conn, "SELECT tree_size FROM merkle_state") >= position,
        "signed head": await one(conn, "SELECT coalesce(max(tree_size), 0) FROM signed_tree_heads") >= position,
    }


async def test_a_retry_of_a_payment_the_standby_lacks_is_not_201_and_no_follower_acts_on_it(tmp_path):
    pair = PostgresPair(tmp_path / "pair", settings={"fsync": "off"})
    nats = EmbeddedNats(data_dir=tmp_path / "nats", port=free_port())
    await asyncio.gather(asyncio.to_thread(pair.start), asyncio.to_thread(nats.start))
    receiver = Receiver()
    try:
        async with receiver.running(), services(pair, nats, tmp_path) as stack:
            vendor = await stack.vendor()
            reply = await stack.client.post(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token,
                                            json={"url": receiver.url})
            assert reply.status == 201, reply.text
            payer = await stack.funded_wallet(10_000)
            kept = await stack.transfer(payer.token, payer.account_id, vendor.account_id, 100)
            assert kept.status == 201, kept.text
            answered = {kept.body["id"]: kept.body["position"]}

            async with await psycopg.AsyncConnection.connect(pair.primary.url, autocommit=True) as old_primary:
                # Both nodes up: every follower acts on the payment (the check below can see it).
                async def followed() -> bool:
                    return (kept.body["id"] in receiver.transfer_ids()
                            and await one(old_primary, "SELECT count(*) FROM verifications WHERE transfer_id = %s",
                                          kept.body["id"]) == 1
                            and await one(old_primary, "SELECT coalesce(max(tree_size), 0) FROM signed_tree_heads")
                            >= kept.body["position"])

                await eventually(followed, timeout_s=WAIT_S_MAX, what="the payment delivered, projected and signed")

                # The standby goes away: a COMMIT now waits for it, until an operator cancels the wait.
                before = {name: held_back(name) for name in FOLLOWERS}
                await asyncio.to_thread(pair.standby.stop)
                key = str(uuid.uuid4())

                def pay() -> asyncio.Task:
                    return asyncio.create_task(stack.transfer(payer.token, payer.account_id, vendor.account_id, 250,
                                                              key=key))

                first = await answered_after_cancelling(old_primary, pay())
                assert first.status == 503 and first.code == "unavailable", first.text
                lost_position = await one(old_primary, "SELECT position FROM journal WHERE amount = 250 AND "
                                          "from_account_id = %s", payer.account_id)
                assert lost_position == kept.body["position"] + 1  # on the primary all the same

                retry = await answered_after_cancelling(old_primary, pay())
                # The issue expected 201 Idempotency-Replayed here. The replay's batch locks the
                # journal head row, a WAL-logged lock, so its COMMIT waits for the standby like a
                # write's, and a cancelled wait is 503 again (`ledger.standby`).
                assert retry.status == 503 and retry.code == "unavailable", (retry.status, retry.headers, retry.text)
                assert "Idempotency-Replayed" not in retry.headers

                # Every follower looks past the payment: each is held back by the standby (today's
                # code instead projected it, wrote its delivery row and sent it, and signed a tree
                # head over it) ...
                async def settled() -> bool:
                    await cancel_standby_waits(old_primary)
                    held = all(held_back(name) > before[name] for name in FOLLOWERS)
                    return held or all((await shown(old_primary, receiver, lost_position)).values())

                await eventually(settled, timeout_s=WAIT_S_MAX, what="every follower held back (or acting)")
                # ... so nothing outside the primary shows it.
                assert not any((found := await shown(old_primary, receiver, lost_position)).values()), found

            # The primary dies and the standby that lacks the payment is promoted.
            await asyncio.to_thread(pair.failover)
            async with await psycopg.AsyncConnection.connect(pair.primary.url, autocommit=True) as new_primary:
                for transfer_id, position in answered.items():
                    assert await one(new_primary, "SELECT position FROM journal WHERE transfer_id = %s",
                                     transfer_id) == position
                assert await one(new_primary, "SELECT count(*) FROM journal WHERE position >= %s", lost_position) == 0

                # The client retries once more: decided afresh on the new primary, and delivered.
                async def paid():
                    reply = await pay()
                    return reply if reply.status == 201 else None

                final = await eventually(paid, timeout_s=WAIT_S_MAX, interval_s=0.2, what="the retry answered 201")
                assert "Idempotency-Replayed" not in final.headers
                assert final.body["position"] == lost_position
                await eventually(lambda: _async(final.body["id"] in receiver.transfer_ids()),
                                 timeout_s=WAIT_S_MAX, what="the payment delivered after the failover")
    finally:
        await asyncio.to_thread(pair.kill)
        await asyncio.to_thread(nats.stop)


async def _async(value):
    return value
