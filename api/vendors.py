"""Handlers of the vendor routes: verification from the projection, and webhooks."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiohttp import web

import schemas
from api.framework import (
    PROJECTION_POSITION, Call, WaitQuery, decode_cursor, encode_cursor, json_response,
)
from api.problems import ApiError, problem_response
from api.search import VendorSearchQuery
from ledger import metrics
from webhooks import store as webhook_store
from webhooks import events as webhooks
from projector import store as projections


WAIT_POLL_S_MAX = 0.05  # a waiter re-reads the projection at least this often
WAIT_RECHECK_S_MIN = 0.01  # and at most this often, whatever the watermark announces


# ---- vendor verification (the projection) ---------------------------------------------------
# The routes' ownership (`owners.vendor_account`) has checked the vendor account before these run.


async def get_verification(services, call: Call) -> web.Response:
    vendor_id, transfer_id = call.ids["account_id"], call.ids["transfer_id"]
    query: WaitQuery = call.query
    async with services.pool.connection() as conn:
        position, verification = await projections.verification(conn, vendor_id, transfer_id,
                                                                 services.settings.projector.name)
    if position < query.min_position:
        position, verification = await _wait_for_projection(services, call, query)
    headers = {PROJECTION_POSITION: str(position)}
    if verification is None:
        error = ApiError("not_found", "no such transfer to this vendor in the projection")
        response = _problem_with_headers(error, headers)
        return response
    return json_response(verification, headers=headers)


async def _wait_for_projection(services, call: Call, query: WaitQuery):
    """Read-your-writes: re-read the projection until it reaches `min_position` or `wait_ms` runs
    out. The database says where the projection is; the projector's announcements only wake the
    wait early, and never more often than `WAIT_RECHECK_S_MIN`, so a forged or stale watermark
    cannot turn the wait into a busy loop. Waiters per process are capped (`waiters_max`)."""
    if services.waiters >= services.settings.api.waiters_max:
        raise ApiError("too_many_waiters", f"{services.waiters} requests are already waiting in this process")
    vendor_id, transfer_id = call.ids["account_id"], call.ids["transfer_id"]
    deadline = time.monotonic() + min(query.wait_ms, services.settings.api.wait_ms_max) / 1000
    services.waiters += 1
    metrics.WAITERS.set(services.waiters)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApiError("projection_behind", f"the projection has not reached min_position {query.min_position}")
            checked = time.monotonic()
            await services.watermark.next_announcement(timeout_s=min(remaining, WAIT_POLL_S_MAX))
            await asyncio.sleep(max(0.0, WAIT_RECHECK_S_MIN - (time.monotonic() - checked)))
            async with services.pool.connection() as conn:
                position, verification = await projections.verification(
                    conn, vendor_id, transfer_id, services.settings.projector.name
                )
            if position >= query.min_position:
                return position, verification
    finally:
        services.waiters -= 1
        metrics.WAITERS.set(services.waiters)


def _problem_with_headers(error: ApiError, headers: dict[str, str]) -> web.Response:
    response = problem_response(error)
    response.headers.update(headers)
    return response


async def list_verifications(services, call: Call) -> web.Response:
    vendor_id = call.ids["account_id"]
    query: VendorSearchQuery = call.query
    after = decode_cursor(query.after)
    async with services.pool.connection() as conn:
        position, items = await projections.verifications_page(
            conn, vendor_id, after=after, limit=query.limit, name=services.settings.projector.name,
            entry_filter=query.entry_filter(), newest_first=query.order == "desc",
        )
    next_cursor = encode_cursor(items[-1].position) if len(items) == query.limit else None
    return json_response(schemas.VerificationPage(items=items, next=next_cursor), headers={PROJECTION_POSITION: str(position)})


# ---- vendor webhooks ------------------------------------------------------------------------
# Who: the vendor account's owner and admin (the routes' ownership: others 403, admin 404 for an
# account that is not a vendor's); the role list of the routes keeps out clients and auditors.


async def create_webhook(services, call: Call) -> web.Response:
    body: schemas.WebhookCreate = call.body
    vendor_id = call.ids["account_id"]
    if services.settings.webhooks.key is None:
        raise ApiError("unavailable", "webhooks are not configured on this service (LEDGER_WEBHOOK_KEY)", retry_after_s=60)
    try:
        await webhooks.check_url(body.url, allow_private=services.settings.webhooks.allow_private)
    except webhooks.UrlNotAllowed as error:
        raise ApiError("webhook_url_not_allowed", str(error)) from None
    event_types = [name for name in schemas.WEBHOOK_EVENT_TYPES if body.event_types is None or name in body.event_types]
    secret, endpoint_id = webhooks.new_secret(), uuid.uuid4()
    encrypted = webhooks.Keyring(services.settings.webhooks.key).encrypt(secret)
    async with services.pool.connection() as conn:
        created_at = await webhook_store.insert_endpoint(
            conn, endpoint_id=endpoint_id, vendor_account_id=vendor_id, url=body.url, event_types=event_types,
            secret_encrypted=encrypted, live_max=webhooks.ENDPOINTS_PER_VENDOR_MAX,
        )
    if created_at is None:
        raise ApiError("too_many_webhooks", f"a vendor account has at most {webhooks.ENDPOINTS_PER_VENDOR_MAX} endpoints")
    answer = schemas.WebhookCreated(id=endpoint_id, url=body.url, event_types=event_types, secret=secret,
                                    created_at=created_at)
    return json_response(answer, status=201)


async def list_webhooks(services, call: Call) -> web.Response:
    vendor_id, query = call.ids["account_id"], call.query
    async with services.pool.connection() as conn:
        page = await webhook_store.endpoints_page(conn, vendor_id, after=decode_cursor(query.after), limit=query.limit)
    next_cursor = encode_cursor(page[-1][0]) if len(page) == query.limit else None
    return json_response(schemas.WebhookPage(items=[item for _, item in page], next=next_cursor))


async def delete_webhook(services, call: Call) -> web.Response:
    vendor_id = call.ids["account_id"]
    async with services.pool.connection() as conn:
        if not await webhook_store.delete_endpoint(conn, vendor_id, call.ids["webhook_id"]):
            raise ApiError("not_found", "no such webhook endpoint for this vendor account")
    return web.Response(status=204)


async def list_webhook_deliveries(services, call: Call) -> web.Response:
    vendor_id, endpoint_id, query = call.ids["account_id"], call.ids["webhook_id"], call.query
    async with services.pool.connection() as conn:
        if not await webhook_store.live_endpoint_exists(conn, vendor_id, endpoint_id):
            raise ApiError("not_found", "no such webhook endpoint for this vendor account")
        page = await webhook_store.deliveries_page(conn, endpoint_id, after=decode_cursor(query.after), limit=query.limit)
    next_cursor = encode_cursor(page[-1][0]) if len(page) == query.limit else None
    return json_response(schemas.WebhookDeliveryPage(items=[item for _, item in page], next=next_cursor))


