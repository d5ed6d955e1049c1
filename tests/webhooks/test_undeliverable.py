"""Rows that cannot be delivered fail and are counted (issue 24 #6), never claimed again for ever.

A URL that `urllib.parse.urlsplit` accepts and yarl (aiohttp's parser) refuses was registered and
then claimed every lease, never counted; so was a row whose endpoint's secret no longer decrypts.
Registration now parses as the sender does, and a row the sender cannot even attempt is counted
as a failed attempt: at once `failed` when its URL does not parse (it never changes), on the
retry schedule when its secret does not decrypt (a key put back in `LEDGER_WEBHOOK_KEY` mends it).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest_asyncio

from tests.conftest import eventually
from webhooks import events
from webhooks import worker as webhook_worker

UNPARSEABLE_URL = "https://a\\@example.com/"  # urlsplit: host example.com; yarl: a ValueError
RECORDED_S_MAX = 20.0  # a first attempt is due within 5 s; generous, the machine is shared


@pytest_asyncio.fixture(scope="module")
async def worker(stack):
    task = asyncio.create_task(webhook_worker.serve(stack.settings), name="test-webhook-worker")
    yield task
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _register(stack, vendor, url: str):
    return await stack.client.post(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token, json={"url": url})


async def _pay(stack, vendor) -> dict:
    payer = await stack.funded_wallet(1_000)
    reply = await stack.transfer(payer.token, payer.account_id, vendor.account_id, 100)
    assert reply.status == 201, reply.text
    return reply.body


async def _row(stack, endpoint_id: uuid.UUID) -> tuple | None:
    async with await stack.superuser() as conn:
        return await (await conn.execute(
            "SELECT status, attempts, last_error, next_attempt_at - now() FROM webhook_deliveries"
            " WHERE endpoint_id = %s", (endpoint_id,))).fetchone()


async def _endpoint_with(stack, vendor, column: str, value: str) -> uuid.UUID:
    """An endpoint registered with a good URL, then changed by hand as an older release or a lost
    key would have left it."""
    reply = await _register(stack, vendor, "https://example.com/hooks")
    assert reply.status == 201, reply.text
    endpoint_id = uuid.UUID(reply.body["id"])
    async with await stack.superuser() as conn:
        await conn.execute(f"UPDATE webhook_endpoints SET {column} = %s WHERE id = %s", (value, endpoint_id))
    return endpoint_id


async def test_registering_a_url_that_the_sender_could_not_parse_is_422(stack):
    reply = await _register(stack, await stack.vendor(), UNPARSEABLE_URL)
    assert (reply.status, reply.code) == (422, "webhook_url_not_allowed"), reply.text


def test_register_time_and_send_time_parse_the_same_way():
    url = events.parse_url("https://Example.com:8443/hooks?a=1")
    assert (url.scheme, url.host, url.port, url.path) == ("https", "example.com", 8443, "/hooks")
    assert events.split_url("http://[::1]:8080/x") == ("::1", 8080)


async def test_a_row_whose_url_does_not_parse_fails_at_its_first_attempt(stack, worker):
    vendor = await stack.vendor()
    endpoint_id = await _endpoint_with(stack, vendor, "url", UNPARSEABLE_URL)
    await _pay(stack, vendor)

    async def settled():
        row = await _row(stack, endpoint_id)
        return row if row is not None and row[0] != "pending" else None

    status, attempts, error, _ = await eventually(settled, timeout_s=RECORDED_S_MAX, what="the row settled")
    assert (status, attempts) == ("failed", 1)
    assert "does not parse" in error


async def test_a_row_whose_secret_does_not_decrypt_is_counted_retried_and_finally_fails(stack, worker):
    vendor = await stack.vendor()
    foreign = events.Keyring(events.new_key()).encrypt(events.new_secret())  # a key the worker lacks
    endpoint_id = await _endpoint_with(stack, vendor, "secret_encrypted", foreign)
    try:
        await _counted_then_failed(stack, vendor, endpoint_id)
    finally:  # `ledger webhooks rotate-key` (another test) must be able to read every secret
        readable = events.Keyring(stack.settings.webhooks.key).encrypt(events.new_secret())
        async with await stack.superuser() as conn:
            await conn.execute("UPDATE webhook_endpoints SET secret_encrypted = %s, deleted_at = now()"
                               " WHERE id = %s", (readable, endpoint_id))


async def _counted_then_failed(stack, vendor, endpoint_id: uuid.UUID) -> None:
    await _pay(stack, vendor)

    async def attempted():
        row = await _row(stack, endpoint_id)
        return row if row is not None and row[1] >= 1 else None

    status, attempts, error, wait = await eventually(attempted, timeout_s=RECORDED_S_MAX, what="an attempt counted")
    assert (status, attempts) == ("pending", 1)
    assert "InvalidToken" in error
    assert 0 < wait.total_seconds() < events.RETRY_DELAYS_S[0] + 1  # the first retry, not the lease
    async with await stack.superuser() as conn:  # the last attempt the schedule allows is due now
        await conn.execute("UPDATE webhook_deliveries SET attempts = %s, next_attempt_at = now()"
                           " WHERE endpoint_id = %s", (events.ATTEMPTS_MAX - 1, endpoint_id))

    async def failed():
        row = await _row(stack, endpoint_id)
        return row if row[0] == "failed" else None

    _, attempts, _, _ = await eventually(failed, timeout_s=RECORDED_S_MAX, what="the row failed")
    assert attempts == events.ATTEMPTS_MAX
