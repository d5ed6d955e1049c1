"""The cap on a vendor's live webhook endpoints holds under concurrent registrations (issue 24 #11:
under READ COMMITTED two registrations could both count 15 and both insert)."""

from __future__ import annotations

import asyncio

from webhooks import events as webhooks

URL = "http://127.0.0.1:9/hook"  # never called: registration only
RACERS = 12


async def _register(stack, vendor):
    return await stack.client.post(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token, json={"url": URL})


async def _live_endpoints(stack, vendor) -> int:
    async with await stack.superuser() as conn:
        row = await (await conn.execute(
            "SELECT count(*) FROM webhook_endpoints WHERE vendor_account_id = %s AND deleted_at IS NULL",
            (vendor.account_id,))).fetchone()
    return row[0]


async def test_concurrent_registrations_never_pass_the_cap(stack):
    vendor = await stack.vendor()
    for _ in range(webhooks.ENDPOINTS_PER_VENDOR_MAX - 1):
        assert (await _register(stack, vendor)).status == 201
    replies = await asyncio.gather(*(_register(stack, vendor) for _ in range(RACERS)))
    statuses = sorted((reply.status, reply.code) for reply in replies)
    assert statuses == [(201, None)] + [(422, "too_many_webhooks")] * (RACERS - 1), statuses
    assert await _live_endpoints(stack, vendor) == webhooks.ENDPOINTS_PER_VENDOR_MAX


async def test_concurrent_registrations_from_none_stop_at_the_cap(stack):
    vendor = await stack.vendor()
    racers = webhooks.ENDPOINTS_PER_VENDOR_MAX + RACERS
    replies = await asyncio.gather(*(_register(stack, vendor) for _ in range(racers)))
    created = [reply for reply in replies if reply.status == 201]
    refused = [reply for reply in replies if (reply.status, reply.code) == (422, "too_many_webhooks")]
    assert (len(created), len(refused)) == (webhooks.ENDPOINTS_PER_VENDOR_MAX, RACERS), [r.text for r in replies]
    assert await _live_endpoints(stack, vendor) == webhooks.ENDPOINTS_PER_VENDOR_MAX
