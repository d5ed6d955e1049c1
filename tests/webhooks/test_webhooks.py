"""Vendor webhooks (CONTRACT v2 "Vendor webhooks"): registration, signed deliveries checked with
the `standardwebhooks` library (not the project's code), retries, isolation of a dead receiver,
deletion, the URL policy, and the pure parts (events by kind, the retry schedule, key rotation).

Receivers are aiohttp servers on 127.0.0.1 that the tests start; the worker
(`webhooks.worker.serve`) runs in the test's event loop for this module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import time
import types
import uuid

import aiohttp
import pytest
import pytest_asyncio
from standardwebhooks.webhooks import Webhook as StandardWebhook

from api.app import SERVICES
from ledger import db
from webhooks import mapper as webhook_mapper
from webhooks import sender as webhook_sender
from webhooks import worker as webhook_worker
from webhooks import events as webhooks
from ledger.config import ConfigError, Settings
from webhooks import store as ws
from tests.conftest import eventually

ALL_TYPES = ["transfer.received", "refund.created", "hold.created", "hold.captured", "hold.voided", "hold.expired"]
DELIVERY_S_MAX = 20.0  # generous: the machine is shared (the contract says within 5 s under normal load)


@pytest_asyncio.fixture(scope="module")
async def worker(stack):
    task = asyncio.create_task(webhook_worker.serve(stack.settings), name="test-webhook-worker")
    yield task
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _register(stack, vendor, url: str, **extra):
    return await stack.client.post(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token,
                                   json={"url": url, **extra})


async def _deliveries(stack, vendor, endpoint_id: str) -> list[dict]:
    reply = await stack.client.get(f"/v1/vendors/{vendor.account_id}/webhooks/{endpoint_id}/deliveries",
                                   token=vendor.token)
    assert reply.status == 200, reply.text
    return reply.body["items"]


async def _pay(stack, vendor, amount: int = 100) -> dict:
    payer = await stack.funded_wallet(10_000)
    reply = await stack.transfer(payer.token, payer.account_id, vendor.account_id, amount)
    assert reply.status == 201, reply.text
    return reply.body


# ---- registration ---------------------------------------------------------------------------


async def test_registering_answers_the_secret_once_and_the_list_never_shows_it(stack):
    vendor = await stack.vendor()
    reply = await _register(stack, vendor, "https://example.com/hooks")
    assert reply.status == 201, reply.text
    assert set(reply.body) == {"id", "url", "event_types", "secret", "created_at"}
    assert reply.body["event_types"] == ALL_TYPES
    secret = reply.body["secret"]
    assert secret.startswith("whsec_") and 24 <= len(base64.b64decode(secret[6:])) <= 64
    listed = await stack.client.get(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token)
    assert listed.status == 200
    assert listed.body == {"items": [{k: v for k, v in reply.body.items() if k != "secret"}], "next": None}
    assert secret not in listed.text


async def test_the_secret_is_stored_encrypted(stack):
    vendor = await stack.vendor()
    reply = await _register(stack, vendor, "https://example.com/hooks")
    async with await stack.superuser() as conn:
        stored = (await (await conn.execute("SELECT secret_encrypted FROM webhook_endpoints WHERE id = %s",
                                            (reply.body["id"],))).fetchone())[0]
    assert reply.body["secret"] not in stored and reply.body["secret"][6:] not in stored
    assert webhooks.Keyring(stack.settings.webhooks.key).decrypt(stored) == reply.body["secret"]


async def test_event_types_are_kept_in_the_contract_order(stack):
    vendor = await stack.vendor()
    reply = await _register(stack, vendor, "https://example.com/a", event_types=["hold.voided", "transfer.received"])
    assert reply.status == 201, reply.text
    assert reply.body["event_types"] == ["transfer.received", "hold.voided"]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "example.com/hook", "http:///nohost",
                                 "javascript:alert(1)"])
async def test_a_url_that_is_not_http_or_https_is_422(stack, url):
    vendor = await stack.vendor()
    reply = await _register(stack, vendor, url)
    assert (reply.status, reply.code) == (422, "webhook_url_not_allowed"), reply.text


@contextlib.contextmanager
def _private_urls_refused(stack):
    """The test stack allows loopback receivers; these tests need the production policy."""
    services = stack.app[SERVICES]
    allowing = services.settings
    services.settings = allowing.replace(webhooks={"allow_private": False})
    try:
        yield
    finally:
        services.settings = allowing


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost/hook", "https://10.1.2.3/",
                                 "http://192.168.0.1/", "http://169.254.169.254/latest/meta-data", "http://[::1]/",
                                 "http://[fe80::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/"])
async def test_a_url_that_resolves_to_a_private_address_is_422_unless_allowed(stack, url):
    vendor = await stack.vendor()
    with _private_urls_refused(stack):
        reply = await _register(stack, vendor, url)
    assert (reply.status, reply.code) == (422, "webhook_url_not_allowed"), reply.text


async def test_a_public_address_is_allowed(stack):
    vendor = await stack.vendor()
    with _private_urls_refused(stack):
        reply = await _register(stack, vendor, "https://93.184.215.14/hook")
    assert reply.status == 201, reply.text


async def test_a_vendor_has_a_bounded_number_of_endpoints(stack):
    vendor = await stack.vendor()
    for _ in range(webhooks.ENDPOINTS_PER_VENDOR_MAX):
        assert (await _register(stack, vendor, "https://example.com/h")).status == 201
    reply = await _register(stack, vendor, "https://example.com/h")
    assert (reply.status, reply.code) == (422, "too_many_webhooks"), reply.text


async def test_the_list_pages_with_a_cursor(stack):
    vendor = await stack.vendor()
    ids = [(await _register(stack, vendor, f"https://example.com/{i}")).body["id"] for i in range(3)]
    first = await stack.client.get(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token,
                                   params={"limit": 2})
    assert [item["id"] for item in first.body["items"]] == ids[:2] and first.body["next"]
    rest = await stack.client.get(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token,
                                  params={"limit": 2, "after": first.body["next"]})
    assert [item["id"] for item in rest.body["items"]] == ids[2:] and rest.body["next"] is None


async def test_deleting_answers_204_then_404(stack):
    vendor = await stack.vendor()
    endpoint = (await _register(stack, vendor, "https://example.com/h")).body["id"]
    path = f"/v1/vendors/{vendor.account_id}/webhooks/{endpoint}"
    assert (await stack.client.request("DELETE", path, token=vendor.token)).status == 204
    again = await stack.client.request("DELETE", path, token=vendor.token)
    assert (again.status, again.code) == (404, "not_found")
    listed = await stack.client.get(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token)
    assert listed.body["items"] == []


# ---- deliveries -----------------------------------------------------------------------------


async def test_a_payment_is_delivered_signed_as_standard_webhooks_says(stack, worker, receivers):
    receiver = await receivers()
    vendor = await stack.vendor()
    created = (await _register(stack, vendor, receiver.url)).body
    paid = await _pay(stack, vendor, 450)
    await eventually(lambda: _true(receiver.requests), timeout_s=DELIVERY_S_MAX)

    request = receiver.requests[0]
    event = StandardWebhook(created["secret"]).verify(request.body, request.headers)
    assert event["type"] == "transfer.received" and event["position"] == paid["position"]
    assert set(event) == {"id", "type", "position", "created_at", "data"}
    assert event["created_at"] == paid["committed_at"]
    assert request.headers["webhook-id"] == event["id"]
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    verification = await stack.client.get(
        f"/v1/vendors/{vendor.account_id}/transfers/{paid['id']}/verification", token=vendor.token,
        params={"min_position": paid["position"], "wait_ms": 5000})
    assert {k: v for k, v in event["data"].items() if k != "projected_at"} == \
        {k: v for k, v in verification.body.items() if k != "projected_at"}

    async def recorded():
        items = await _deliveries(stack, vendor, created["id"])
        return items if items and items[0]["status"] == "delivered" else None

    items = await eventually(recorded, timeout_s=DELIVERY_S_MAX)
    assert items == [{"event_id": event["id"], "type": "transfer.received", "position": paid["position"],
                      "attempts": 1, "status": "delivered", "last_status_code": 200, "next_attempt_at": None}]


async def test_a_payment_is_not_an_event_for_the_payer_or_for_an_endpoint_not_subscribed(stack, worker, receivers):
    subscribed, other = await receivers(), await receivers()
    vendor = await stack.vendor()
    await _register(stack, vendor, other.url, event_types=["refund.created"])
    created = (await _register(stack, vendor, subscribed.url, event_types=["transfer.received"])).body
    await _pay(stack, vendor)
    await eventually(lambda: _true(subscribed.requests), timeout_s=DELIVERY_S_MAX)
    assert other.requests == []
    assert len(await _deliveries(stack, vendor, created["id"])) == 1


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_a_failed_attempt_is_retried_about_5_s_later_with_the_same_id(stack, worker, receivers):
    receiver = await receivers(status=500)
    vendor = await stack.vendor()
    created = (await _register(stack, vendor, receiver.url)).body
    await _pay(stack, vendor)
    await eventually(lambda: _true(len(receiver.requests) >= 2), timeout_s=DELIVERY_S_MAX + 10)
    first, second = receiver.requests[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert 4.0 <= second.at - first.at <= 20.0
    for request in (first, second):
        StandardWebhook(created["secret"]).verify(request.body, request.headers)

    async def two_attempts():
        items = await _deliveries(stack, vendor, created["id"])
        return items if items and items[0]["attempts"] >= 2 else None

    [item] = await eventually(two_attempts, timeout_s=DELIVERY_S_MAX)
    assert (item["status"], item["last_status_code"]) == ("pending", 500)
    assert item["next_attempt_at"] is not None  # the third attempt, about 5 min later


async def test_a_dead_receiver_never_slows_transfers_or_other_vendors(stack, worker, receivers):
    hanging = await receivers(delay_s=30)
    healthy = await receivers()
    stuck_vendor, vendor = await stack.vendor(), await stack.vendor()
    await _register(stack, stuck_vendor, hanging.url)
    await _register(stack, vendor, healthy.url)
    started = time.monotonic()
    for _ in range(20):
        await _pay(stack, stuck_vendor, 1)
    paying_s = time.monotonic() - started
    await _pay(stack, vendor)
    paid_at = time.monotonic()
    await eventually(lambda: _true(healthy.requests), timeout_s=DELIVERY_S_MAX)
    assert healthy.requests[0].at - paid_at < DELIVERY_S_MAX
    assert paying_s < 20 * 2.0, paying_s  # each payment (with its funding) answered without waiting for webhooks
    assert hanging.requests and hanging.active_max <= stack.settings.webhooks.endpoint_concurrency_max


async def test_a_hanging_endpoint_never_slows_another_vendors_endpoint_on_the_same_host(stack, worker, receivers):
    hanging = await receivers(delay_s=30)
    stuck_vendor, vendor = await stack.vendor(), await stack.vendor()
    await _register(stack, stuck_vendor, hanging.url)
    await _register(stack, vendor, hanging.prompt_url)
    for _ in range(stack.settings.webhooks.endpoint_concurrency_max + 4):
        await _pay(stack, stuck_vendor, 1)

    async def all_slots_hang():
        return hanging.active >= stack.settings.webhooks.endpoint_concurrency_max

    await eventually(all_slots_hang, timeout_s=DELIVERY_S_MAX)
    await _pay(stack, vendor)
    paid_at = time.monotonic()
    await eventually(lambda: _true(hanging.prompt_requests), timeout_s=DELIVERY_S_MAX)
    # Within the contract's 5 s, not queued for a connection behind the hanging attempts (which
    # end only when their 10 s attempt timeout does).
    assert hanging.prompt_requests[0].at - paid_at < 5.0


async def test_no_delivery_starts_after_the_endpoint_is_deleted(stack, worker, receivers):
    receiver = await receivers()
    vendor = await stack.vendor()
    created = (await _register(stack, vendor, receiver.url)).body
    reply = await stack.client.request("DELETE", f"/v1/vendors/{vendor.account_id}/webhooks/{created['id']}",
                                       token=vendor.token)
    assert reply.status == 204
    paid = await _pay(stack, vendor)
    later = await _pay(stack, await stack.vendor())  # anything after it: the worker has passed both

    async def mapped():
        async with await stack.superuser() as conn:
            row = await (await conn.execute("SELECT position FROM webhook_checkpoint WHERE name = 'main'")).fetchone()
        return row is not None and row[0] >= later["position"]

    await eventually(mapped, timeout_s=DELIVERY_S_MAX)
    # The mapper has passed the payment: had it written a delivery for the deleted endpoint, the
    # row would be there now, and a sender could only ever send what such a row holds.
    async with await stack.superuser() as conn:
        rows = await (await conn.execute("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = %s",
                                         (uuid.UUID(created["id"]),))).fetchone()
    assert rows[0] == 0
    assert receiver.requests == [] and paid["position"] < later["position"]


async def test_a_deleted_endpoint_leaves_the_worker_cache_at_the_next_check(stack, receivers):
    receiver = await receivers()
    vendor = await stack.vendor()
    created = (await _register(stack, vendor, receiver.url)).body
    endpoint_id = uuid.UUID(created["id"])
    pool = db.make_pool(stack.database_url, role=ws.WEBHOOKS_ROLE, size_max=1, name="test-webhooks")
    await pool.open(wait=True)
    try:
        sender = webhook_sender.Sender(pool=pool, keyring=webhook_worker.keyring_from(stack.settings),
                                       wake=asyncio.Event(), concurrency_max=1, endpoint_max=1, allow_private=True)
        await sender._check_endpoints()
        target = await sender._endpoint(endpoint_id)
        assert (str(target.url), target.key) == (receiver.url, webhooks.secret_key(created["secret"]))
        reply = await stack.client.request("DELETE", f"/v1/vendors/{vendor.account_id}/webhooks/{endpoint_id}",
                                           token=vendor.token)
        assert reply.status == 204
        await sender._check_endpoints()
        assert await sender._endpoint(endpoint_id) is None  # a row claimed before the delete is not sent
    finally:
        await pool.close()


async def test_the_worker_refuses_an_endpoint_whose_host_is_private_and_checks_it_again_next_time(stack):
    """Registered while private addresses were allowed, delivered by a worker that refuses them:
    the URL is checked when the worker first takes the endpoint, and a refusal is not cached."""
    vendor = await stack.vendor()
    endpoint_id = uuid.UUID((await _register(stack, vendor, "http://127.0.0.1:9/hook")).body["id"])
    pool = db.make_pool(stack.database_url, role=ws.WEBHOOKS_ROLE, size_max=1, name="test-webhooks")
    await pool.open(wait=True)
    try:
        sender = webhook_sender.Sender(pool=pool, keyring=webhook_worker.keyring_from(stack.settings),
                                       wake=asyncio.Event(), concurrency_max=1, endpoint_max=1, allow_private=False)
        for _ in range(2):
            with pytest.raises(webhooks.UrlNotAllowed):
                await sender._endpoint(endpoint_id)
        assert sender._endpoints == {}
    finally:
        await pool.close()


async def test_the_workers_resolver_refuses_a_host_with_a_private_address_on_every_lookup():
    """The connections' own lookups are checked (a DNS answer may change after the URL's check)."""
    resolver = webhook_sender.PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="non-public"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


async def test_the_sender_takes_new_rows_only_within_its_bounded_queue_overall_per_endpoint_and_per_vendor(stack):
    sender = webhook_sender.Sender(pool=None, keyring=webhook_worker.keyring_from(stack.settings), wake=asyncio.Event(),
                                   concurrency_max=4, endpoint_max=1, allow_private=True)
    (a, b, c, d, e, f, g), vendors = [uuid.uuid4() for _ in range(7)], [uuid.uuid4() for _ in range(6)]
    v1, v2, v3, v4, v5, v6 = vendors
    assert sender.reserve([(a, v1)]) == [False]  # not sending yet: the claims take the rows later
    async with aiohttp.ClientSession() as http:
        sender._http = http
        # 4 slots, 1 per endpoint: 8 rows held at most, 2 per endpoint; half the slots per vendor.
        assert sender.reserve([(a, v1), (a, v1), (a, v1), (b, v1), (c, v2), (c, v2), (d, v3), (d, v3), (e, v4),
                               (e, v4), (f, v5)]) == [True, True, False, False, True, True, True, True, True, True, False]
        sender.release([(a, v1), (a, v1)])
        # a has rows written due now: its new ones wait behind them (oldest first); g has room.
        assert sender.reserve([(a, v1), (g, v6)]) == [False, True]


async def _fresh_start(conn, name: str) -> int:
    return await ws.start_cursor(conn, name, margin_s=webhook_mapper.START_MARGIN_S)


async def test_a_new_worker_starts_at_the_journal_head_when_no_endpoint_is_live(stack):
    await _pay(stack, await stack.vendor())
    async with await stack.superuser() as conn:
        async with conn.transaction(force_rollback=True):  # the endpoints of the other tests stay live
            await conn.execute("UPDATE webhook_endpoints SET deleted_at = now() WHERE deleted_at IS NULL")
            head = (await (await conn.execute("SELECT position FROM journal_head WHERE id = 1")).fetchone())[0]
            assert head > 0
            assert await _fresh_start(conn, f"test-{uuid.uuid4()}") == head


async def test_a_new_worker_starts_just_before_the_earliest_live_endpoint_was_registered(stack):
    await _register(stack, await stack.vendor(), "https://example.com/hooks")
    await _pay(stack, await stack.vendor())
    async with await stack.superuser() as conn:
        start = await _fresh_start(conn, f"test-{uuid.uuid4()}")
        since = (await (await conn.execute(
            "SELECT min(created_at) - %s * INTERVAL '1 second' FROM webhook_endpoints WHERE deleted_at IS NULL",
            (webhook_mapper.START_MARGIN_S,))).fetchone())[0]
        first_unread = (await (await conn.execute("SELECT committed_at FROM journal WHERE position = %s",
                                                  (start + 1,))).fetchone())[0]
        last_skipped = (await (await conn.execute("SELECT committed_at FROM journal WHERE position = %s",
                                                  (start,))).fetchone())
    assert first_unread >= since  # nothing committed since then is skipped
    assert last_skipped is None or last_skipped[0] < since  # and nothing older is read


async def test_delivered_and_failed_rows_past_their_retention_are_deleted_and_pending_ones_never(stack, worker,
                                                                                                 receivers):
    receiver = await receivers()
    vendor = await stack.vendor()
    endpoint_id = uuid.UUID((await _register(stack, vendor, receiver.url)).body["id"])
    for _ in range(3):
        await _pay(stack, vendor)

    async def recorded():
        items = await _deliveries(stack, vendor, str(endpoint_id))
        return len(items) == 3 and all(item["status"] == "delivered" for item in items)

    await eventually(recorded, timeout_s=DELIVERY_S_MAX)
    async with await stack.superuser() as conn:
        seqs = [row[0] for row in await (await conn.execute(
            "SELECT event_seq FROM webhook_deliveries WHERE endpoint_id = %s ORDER BY event_seq", (endpoint_id,)
        )).fetchall()]
        # The first is old and delivered, the second old and failed, the third old but pending again.
        await conn.execute("UPDATE webhook_deliveries SET created_at = now() - INTERVAL '8 days',"
                           " status = CASE event_seq WHEN %s THEN 'delivered' WHEN %s THEN 'failed' ELSE 'pending' END,"
                           " next_attempt_at = now() + INTERVAL '1 hour' WHERE endpoint_id = %s", (*seqs[:2], endpoint_id))
        # In batches of one, until a batch comes back short (the worker's own sweep may take some).
        while await ws.delete_settled(conn, older_than_s=7 * 86_400, limit=1) == 1:
            pass
        left = [row[0] for row in await (await conn.execute(
            "SELECT event_seq FROM webhook_deliveries WHERE endpoint_id = %s", (endpoint_id,))).fetchall()]
    assert left == [seqs[2]]


async def test_the_rows_of_an_endpoint_deleted_past_the_retention_go_pending_ones_too(stack, worker, receivers):
    receiver = await receivers()
    vendor = await stack.vendor()
    kept = uuid.UUID((await _register(stack, vendor, receiver.url)).body["id"])
    gone = uuid.UUID((await _register(stack, vendor, receiver.url)).body["id"])
    for _ in range(2):
        await _pay(stack, vendor)

    async def recorded():
        counts = [len(await _deliveries(stack, vendor, str(endpoint))) for endpoint in (kept, gone)]
        return counts == [2, 2]

    await eventually(recorded, timeout_s=DELIVERY_S_MAX)
    reply = await stack.client.request("DELETE", f"/v1/vendors/{vendor.account_id}/webhooks/{gone}",
                                       token=vendor.token)
    assert reply.status == 204
    async with await stack.superuser() as conn:
        # Both endpoints' rows are pending again; one endpoint was deleted 8 days ago.
        await conn.execute("UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now() + INTERVAL '1 hour'"
                           " WHERE endpoint_id = ANY(%s)", ([kept, gone],))
        await conn.execute("UPDATE webhook_endpoints SET deleted_at = now() - INTERVAL '8 days' WHERE id = %s", (gone,))
        while await ws.delete_of_deleted_endpoints(conn, older_than_s=7 * 86_400, limit=1) == 1:
            pass
        left = dict(await (await conn.execute(
            "SELECT endpoint_id, count(*) FROM webhook_deliveries WHERE endpoint_id = ANY(%s) GROUP BY endpoint_id",
            ([kept, gone],))).fetchall())
    assert left == {kept: 2}


async def test_a_first_failure_and_a_later_one_are_recorded_in_one_statement(stack):
    """The first retry's delay and a later, jittered one in one batch (a failing endpoint under
    steady traffic has both every 50 ms): they once could not be sent together, and the recorder
    died on it."""
    vendor = await stack.vendor()
    endpoint_id = uuid.UUID((await _register(stack, vendor, "https://example.com/hooks")).body["id"])
    reply = await stack.client.request("DELETE", f"/v1/vendors/{vendor.account_id}/webhooks/{endpoint_id}",
                                       token=vendor.token)
    assert reply.status == 204  # no worker attempts its rows; they are written here by hand
    now = dt.datetime.now(dt.timezone.utc)
    claimed = [ws.Claimed(endpoint_id, seq, uuid.uuid4(), b"{}", attempts, now) for seq, attempts in ((8, 0), (16, 1))]
    async with await stack.superuser() as conn:
        for row in claimed:
            await conn.execute(
                "INSERT INTO webhook_deliveries (endpoint_id, event_seq, event_id, type, position, payload,"
                " committed_at, attempts, next_attempt_at) VALUES (%s, %s, %s, 'transfer.received', %s, '{}', now(),"
                " %s, now())", (endpoint_id, row.event_seq, row.event_id, row.event_seq // 8, row.attempts))
        retries = [webhooks.retry_delay_s(row.attempts + 1) for row in claimed]
        await ws.record_attempts(conn, [ws.Attempt(row, "pending", 500, None, retry)
                                        for row, retry in zip(claimed, retries)])
        rows = await (await conn.execute(
            "SELECT attempts, last_status_code, next_attempt_at - now() FROM webhook_deliveries"
            " WHERE endpoint_id = %s ORDER BY event_seq", (endpoint_id,))).fetchall()
    assert [(attempts, code) for attempts, code, _ in rows] == [(1, 500), (2, 500)]
    assert [round(wait.total_seconds()) for _, _, wait in rows] == [round(retry) for retry in retries]


async def test_an_attempt_recorded_after_its_row_was_settled_changes_nothing(stack):
    """A sender whose lease ran out records late: the row another one settled meanwhile stays as
    it is (the recorder tests the status as a join clause, `d.status = o.was`)."""
    vendor = await stack.vendor()
    endpoint_id = uuid.UUID((await _register(stack, vendor, "https://example.com/hooks")).body["id"])
    reply = await stack.client.request("DELETE", f"/v1/vendors/{vendor.account_id}/webhooks/{endpoint_id}",
                                       token=vendor.token)
    assert reply.status == 204  # no worker attempts its rows; they are written here by hand
    now = dt.datetime.now(dt.timezone.utc)
    rows = [ws.Claimed(endpoint_id, seq, uuid.uuid4(), b"{}", 0, now) for seq in (8, 16)]
    async with await stack.superuser() as conn:
        for row, status in zip(rows, ("delivered", "pending")):
            await conn.execute(
                "INSERT INTO webhook_deliveries (endpoint_id, event_seq, event_id, type, position, payload,"
                " committed_at, status, attempts, last_status_code, next_attempt_at) VALUES (%s, %s, %s,"
                " 'transfer.received', %s, '{}', now(), %s, 0, 204, now())",
                (endpoint_id, row.event_seq, row.event_id, row.event_seq // 8, status))
        await ws.record_attempts(conn, [ws.Attempt(row, "pending", 500, "late", 5.0) for row in rows])
        found = await (await conn.execute(
            "SELECT status, attempts, last_status_code FROM webhook_deliveries WHERE endpoint_id = %s"
            " ORDER BY event_seq", (endpoint_id,))).fetchall()
    assert found == [("delivered", 0, 204), ("pending", 1, 500)]


def test_the_retention_is_a_setting_of_at_least_an_hour():
    assert Settings().webhooks.retention_s == 7 * 86_400
    assert Settings.from_env(webhooks={"retention_s": 3_600}).webhooks.retention_s == 3_600
    with pytest.raises(ConfigError, match="LEDGER_WEBHOOK_RETENTION_S"):
        Settings().replace(webhooks={"retention_s": 60})


# ---- the pure parts -------------------------------------------------------------------------


def test_the_retry_schedule_lasts_at_least_24_hours_then_gives_up():
    delays = [webhooks.retry_delay_s(n) for n in range(1, webhooks.ATTEMPTS_MAX + 1)]
    assert delays[0] == 5
    assert all(isinstance(delay, float) for delay in delays[:-1])  # one type: they go out as FLOAT8[]
    assert delays[-1] is None
    # Even when the jitter shortens every later delay as much as it can, the retries span 24 h.
    shortest = webhooks.RETRY_DELAYS_S[0] + sum(webhooks.RETRY_DELAYS_S[1:]) * (1 - webhooks.RETRY_JITTER)
    assert shortest >= 24 * 3600
    assert all(abs(d - n) <= n * webhooks.RETRY_JITTER for d, n in zip(delays[1:-1], webhooks.RETRY_DELAYS_S[1:]))


def _entry(kind: str | None, *, source: uuid.UUID, target: uuid.UUID):
    fields = dict(position=7, transfer_id=uuid.uuid4(), from_account_id=source, to_account_id=target, amount=5,
                  currency="USD", reference="r", committed_at="2026-11-26T10:00:00.000000Z", hash="0" * 64)
    if kind is not None:
        fields["kind"] = kind
    return types.SimpleNamespace(**fields)


@pytest.mark.parametrize(("kind", "party", "expected"), [
    (None, "to", ["transfer.received"]),
    ("transfer", "to", ["transfer.received"]),
    ("transfer", "from", []),
    ("refund", "from", ["refund.created"]),
    ("hold", "to", ["hold.created"]),
    ("capture", "to", ["transfer.received", "hold.captured"]),
    ("void", "to", ["hold.voided"]),
    ("expire", "to", ["hold.expired"]),
    ("unknown-kind", "to", []),
])
def test_each_kind_of_entry_is_its_events_for_the_vendor(kind, party, expected):
    import datetime as dt

    vendor, other = uuid.uuid4(), uuid.uuid4()
    entry = _entry(kind, source=vendor if party == "from" else other, target=vendor if party == "to" else other)
    events = webhooks.events_of(entry, {vendor}, now=dt.datetime.now(dt.timezone.utc))
    assert sorted(e.type for e in events) == sorted(expected)
    assert len({e.seq for e in events}) == len(events) and all(e.position == 7 for e in events)
    again = webhooks.events_of(entry, {vendor}, now=dt.datetime.now(dt.timezone.utc))
    assert [e.id for e in again] == [e.id for e in events]  # the same id on every mapping


def test_signatures_verify_with_the_standard_library_and_a_tampered_body_does_not():
    secret = webhooks.new_secret()
    body = b'{"id":"x"}'
    headers = webhooks.signed_headers(webhooks.secret_key(secret), event_id="x", timestamp=int(time.time()), body=body)
    StandardWebhook(secret).verify(body, headers)
    with pytest.raises(Exception):
        StandardWebhook(secret).verify(b'{"id":"y"}', headers)


async def test_rotate_key_re_encrypts_every_secret_so_the_old_key_can_go(stack):
    vendor = await stack.vendor()
    secret = (await _register(stack, vendor, "https://example.com/h")).body["secret"]
    new_key = webhooks.new_key()
    both = stack.settings.replace(webhooks={"key": f"{new_key},{stack.settings.webhooks.key}"})
    try:
        assert await webhook_worker.rotate_key(both) >= 1
        async with await stack.superuser() as conn:
            rows = await (await conn.execute("SELECT secret_encrypted FROM webhook_endpoints")).fetchall()
        only_new = webhooks.Keyring(new_key)
        assert secret in {only_new.decrypt(row[0]) for row in rows}
    finally:
        # Back to the stack's key, for the other tests of the session.
        back = stack.settings.replace(webhooks={"key": f"{stack.settings.webhooks.key},{new_key}"})
        await webhook_worker.rotate_key(back)


async def _true(value) -> bool:
    return bool(value)


# ---- the typed client and the metrics -------------------------------------------------------


async def test_the_client_registers_lists_reads_deliveries_and_deletes(stack, worker, receivers):
    from client import LedgerClient, LedgerProblem

    receiver = await receivers()
    vendor = await stack.vendor()
    base = stack.client.base
    async with LedgerClient(base, token=vendor.token) as ledger:
        created = await ledger.create_webhook(uuid.UUID(vendor.account_id), url=receiver.url,
                                              event_types=["transfer.received"])
        assert created.secret.startswith("whsec_") and created.event_types == ["transfer.received"]
        pages = [page async for page in ledger.webhooks(uuid.UUID(vendor.account_id))]
        assert [item.id for item in pages[0].items] == [created.id]
        await _pay(stack, vendor)

        async def delivered():
            pages = [p async for p in ledger.webhook_deliveries(uuid.UUID(vendor.account_id), created.id)]
            items = pages[0].items
            return items if items and items[0].status == "delivered" else None

        [item] = await eventually(delivered, timeout_s=DELIVERY_S_MAX)
        assert item.type == "transfer.received" and item.attempts == 1 and item.next_attempt_at is None
        await ledger.delete_webhook(uuid.UUID(vendor.account_id), created.id)
        with pytest.raises(LedgerProblem) as problem:
            await ledger.delete_webhook(uuid.UUID(vendor.account_id), created.id)
        assert problem.value.code == "not_found"


async def test_metrics_count_deliveries_by_outcome_attempt_latency_and_the_oldest_undelivered(stack, worker, receivers):
    receiver = await receivers()
    vendor = await stack.vendor()
    await _register(stack, vendor, receiver.url)
    await _pay(stack, vendor)
    await eventually(lambda: _true(receiver.requests), timeout_s=DELIVERY_S_MAX)
    reply = await stack.client.get("/metrics")
    for name in ('ledger_webhook_deliveries_total{outcome="delivered"}', "ledger_webhook_attempt_duration_seconds_count",
                 "ledger_webhook_delivery_latency_seconds_count", "ledger_webhook_oldest_undelivered_age_seconds",
                 "ledger_webhook_checkpoint_position"):
        assert name in reply.text, name
