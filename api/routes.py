"""The HTTP routes of the contract. Each handler reads straight down: decode, authorize, act.

`ROUTES` at the end declares each route once: who may call it, what it answers and which problems
its handler can raise. `api.framework` runs the checks before the handler and `api.openapi`
documents the declarations.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import msgspec
from aiohttp import web

import schemas
from api import auth
from api.auth import Principal
from api.framework import (
    ALL_ROLES, ANSWER_STARTED, NDJSON, PROJECTION_POSITION, Call, Header, JournalQuery, PageQuery, Route, WaitQuery, decode_cursor,
    encode_cursor, json_response,
)
from api.problems import ApiError, problem_response
from ledger import committer as committer_mod
from ledger import domain, metrics, principals, store, webhooks
from ledger import webhook_store
from projector import store as projections

WAIT_POLL_S_MAX = 0.05  # a waiter re-reads the projection at least this often
WAIT_RECHECK_S_MIN = 0.01  # and at most this often, whatever the watermark announces


# ---- principals and accounts ----------------------------------------------------------------


async def create_principal(services, call: Call) -> web.Response:
    body: schemas.PrincipalCreate = call.body
    async with services.pool.connection() as conn:
        principal, token = await principals.create(conn, role=body.role, name=body.name)
    return json_response(schemas.Principal(id=principal.id, role=body.role, name=body.name, token=token), status=201)


async def create_token(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        if not await store.principal_exists(conn, call.ids["principal_id"]):
            raise ApiError("not_found", "no such principal")
        row, token = await principals.issue_token(conn, call.ids["principal_id"])
    return json_response(schemas.TokenCreated(id=row.id, token=token, created_at=row.created_at), status=201)


async def list_tokens(services, call: Call) -> web.Response:
    try:
        async with services.pool.connection() as conn:
            rows = await principals.tokens(conn, call.ids["principal_id"])
    except principals.NoSuchPrincipal:
        raise ApiError("not_found", "no such principal") from None
    items = [schemas.TokenInfo(id=r.id, created_at=r.created_at, last_used_at=r.last_used_at, revoked_at=r.revoked_at)
             for r in rows]
    return json_response(schemas.TokenList(items=items))


async def revoke_token(services, call: Call) -> web.Response:
    try:
        async with services.pool.connection() as conn:
            await principals.revoke(conn, call.ids["principal_id"], call.ids["token_id"])
    except principals.NoSuchPrincipal:
        raise ApiError("not_found", "no such token for this principal") from None
    services.auth.forget()  # refused here at once; other processes within their cache time
    return web.Response(status=204)


async def create_account(services, call: Call) -> web.Response:
    body: schemas.AccountCreate = call.body
    wanted = store.AccountRow(body.id or uuid.uuid4(), body.kind, body.currency, body.owner_id, body.name, None)
    async with services.pool.connection() as conn:
        if body.owner_id is not None and not await store.principal_exists(conn, body.owner_id):
            raise ApiError("owner_not_found")
        stored, created = await store.insert_account(conn, wanted)
        if not created and not _same_account(stored, wanted):
            raise ApiError("account_exists")
        answer = await store.account_with_balance(conn, stored.id)
    services.remember_account(stored)
    return json_response(answer, status=201 if created else 200)


def _same_account(a: store.AccountRow, b: store.AccountRow) -> bool:
    return (a.kind, a.currency, a.owner_id) == (b.kind, b.currency, b.owner_id)


async def get_account(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        account = await store.account_with_balance(conn, call.ids["account_id"])
    _authorize_account(call.principal, account)
    return json_response(account)


def _authorize_account(principal: Principal, account: schemas.Account | None) -> None:
    """Admin and auditor read everything (404 when absent); others only what they own, and an
    absent account is not theirs either (403, so ids cannot be probed)."""
    if principal.role in auth.READ_EVERYTHING:
        if account is None:
            raise ApiError("not_found")
        return
    if account is None or account.owner_id != principal.id:
        raise ApiError("forbidden")


# ---- transfers ------------------------------------------------------------------------------


def request_hash(body: schemas.TransferCreate) -> bytes:
    """What "the same body" means: the decoded request, not its spelling (spaces, key order)."""
    canonical = msgspec.json.encode(
        [str(body.from_account_id), str(body.to_account_id), body.amount, body.currency, body.reference,
         sorted(body.metadata.items())]
    )
    return hashlib.sha256(canonical).digest()


def transfer_body(entry: schemas.JournalEntry) -> schemas.Transfer:
    return schemas.transfer_from_entry(entry)


async def create_transfer(services, call: Call) -> web.Response:
    body: schemas.TransferCreate = call.body
    command = domain.TransferCommand(
        principal_id=call.principal.id,
        principal_role=call.principal.role,
        idempotency_key=call.idempotency_key,
        request_hash=request_hash(body),
        from_account_id=body.from_account_id,
        to_account_id=body.to_account_id,
        amount=body.amount,
        currency=body.currency,
        reference=body.reference,
        metadata=body.metadata,
    )
    try:
        answer = await services.committer.submit(command)
    except committer_mod.QueueFull:
        raise ApiError("queue_full") from None
    except committer_mod.Unavailable as error:
        # The connection may have died after COMMIT was sent: the outcome is unknown, and only a
        # retry with the same key tells (a replay if it committed, a fresh decision if not).
        raise ApiError(
            "unavailable", f"the transfer may or may not be committed; retry with the same Idempotency-Key: {error}"
        ) from None
    if answer.rejection is not None:
        raise ApiError(answer.rejection.value)
    headers = {"Idempotency-Replayed": "true"} if answer.replayed else None
    return json_response(transfer_body(answer.entry), status=201, headers=headers)


async def get_transfer(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        entry = await store.entry_by_transfer_id(conn, call.ids["transfer_id"])
        reads_everything = call.principal.role in auth.READ_EVERYTHING
        if entry is None:
            # As for accounts: an absent transfer is no one's, so others get 403 and cannot probe ids.
            raise ApiError("not_found" if reads_everything else "forbidden")
        if not reads_everything:
            owners = await store.account_owners(conn, [entry.from_account_id, entry.to_account_id])
            if call.principal.id not in owners.values():
                raise ApiError("forbidden")
    return json_response(transfer_body(entry))


# ---- vendor verification (the projection) ---------------------------------------------------


async def _authorize_vendor(services, principal: Principal, account_id: uuid.UUID) -> None:
    account = services.accounts.get(account_id)
    if account is None:
        async with services.pool.connection() as conn:
            account = await store.account_by_id(conn, account_id)
        if account is not None:
            services.remember_account(account)
    if principal.role in auth.READ_EVERYTHING:
        if account is None or account.kind != "vendor":
            raise ApiError("not_found", "no such vendor account")
        return
    if account is None or account.kind != "vendor" or account.owner_id != principal.id:
        raise ApiError("forbidden")


async def get_verification(services, call: Call) -> web.Response:
    vendor_id, transfer_id = call.ids["account_id"], call.ids["transfer_id"]
    await _authorize_vendor(services, call.principal, vendor_id)
    query: WaitQuery = call.query
    async with services.pool.connection() as conn:
        position, verification = await projections.verification(conn, vendor_id, transfer_id, services.settings.projector_name)
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
    if services.waiters >= services.settings.waiters_max:
        raise ApiError("too_many_waiters", f"{services.waiters} requests are already waiting in this process")
    vendor_id, transfer_id = call.ids["account_id"], call.ids["transfer_id"]
    deadline = time.monotonic() + min(query.wait_ms, services.settings.wait_ms_max) / 1000
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
                    conn, vendor_id, transfer_id, services.settings.projector_name
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
    query: PageQuery = call.query
    after = decode_cursor(query.after)
    await _authorize_vendor(services, call.principal, vendor_id)
    async with services.pool.connection() as conn:
        position, items = await projections.verifications_page(
            conn, vendor_id, after=after, limit=query.limit, name=services.settings.projector_name
        )
    next_cursor = encode_cursor(items[-1].position) if len(items) == query.limit else None
    return json_response(schemas.VerificationPage(items=items, next=next_cursor), headers={PROJECTION_POSITION: str(position)})


# ---- the journal ----------------------------------------------------------------------------

JOURNAL_PAGE_ROWS = 500


async def get_journal(services, call: Call) -> web.StreamResponse:
    """Stream NDJSON page by page, so memory does not grow with `limit`."""
    query: JournalQuery = call.query
    response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
    await response.prepare(call.request)
    call.request[ANSWER_STARTED] = True  # a failure from here on cuts the connection
    after, left = query.after, query.limit
    encoder = msgspec.json.Encoder()
    while left > 0:
        async with services.pool.connection() as conn:
            entries = await store.entries_after(conn, after, min(left, JOURNAL_PAGE_ROWS))
        if not entries:
            break
        buffer = bytearray()
        for entry in entries:
            encoder.encode_into(entry, buffer, len(buffer))
            buffer.extend(b"\n")
        await response.write(bytes(buffer))
        after, left = entries[-1].position, left - len(entries)
    await response.write_eof()
    return response


async def get_journal_head(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        head = await store.journal_head(conn)
    return json_response(head)


# ---- operations -----------------------------------------------------------------------------


async def healthz(services, call: Call) -> web.Response:
    return json_response(schemas.Health(status="ok"))


async def readyz(services, call: Call) -> web.Response:
    """From the last background probe (once a second): a probe request takes no connection."""
    checks = {"database": services.readiness.database, "nats": "ok" if services.bus.connected else "down"}
    ready = all(v == "ok" for v in checks.values())
    return json_response(schemas.Health(status="ready" if ready else "not_ready", checks=checks), status=200 if ready else 503)


# ---- vendor webhooks ------------------------------------------------------------------------
# Who: the vendor account's owner and admin (`_authorize_vendor`: others 403, admin 404 for an
# account that is not a vendor's); the role list of the routes keeps out clients and auditors.


async def create_webhook(services, call: Call) -> web.Response:
    body: schemas.WebhookCreate = call.body
    vendor_id = call.ids["account_id"]
    await _authorize_vendor(services, call.principal, vendor_id)
    if services.settings.webhook_key is None:
        raise ApiError("unavailable", "webhooks are not configured on this service (LEDGER_WEBHOOK_KEY)", retry_after_s=60)
    try:
        await webhooks.check_url(body.url, allow_private=services.settings.webhook_allow_private)
    except webhooks.UrlNotAllowed as error:
        raise ApiError("webhook_url_not_allowed", str(error)) from None
    event_types = [name for name in schemas.WEBHOOK_EVENT_TYPES if body.event_types is None or name in body.event_types]
    secret, endpoint_id = webhooks.new_secret(), uuid.uuid4()
    encrypted = webhooks.Keyring(services.settings.webhook_key).encrypt(secret)
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
    await _authorize_vendor(services, call.principal, vendor_id)
    async with services.pool.connection() as conn:
        page = await webhook_store.endpoints_page(conn, vendor_id, after=decode_cursor(query.after), limit=query.limit)
    next_cursor = encode_cursor(page[-1][0]) if len(page) == query.limit else None
    return json_response(schemas.WebhookPage(items=[item for _, item in page], next=next_cursor))


async def delete_webhook(services, call: Call) -> web.Response:
    vendor_id = call.ids["account_id"]
    await _authorize_vendor(services, call.principal, vendor_id)
    async with services.pool.connection() as conn:
        if not await webhook_store.delete_endpoint(conn, vendor_id, call.ids["webhook_id"]):
            raise ApiError("not_found", "no such webhook endpoint for this vendor account")
    return web.Response(status=204)


async def list_webhook_deliveries(services, call: Call) -> web.Response:
    vendor_id, endpoint_id, query = call.ids["account_id"], call.ids["webhook_id"], call.query
    await _authorize_vendor(services, call.principal, vendor_id)
    async with services.pool.connection() as conn:
        if not await webhook_store.live_endpoint_exists(conn, vendor_id, endpoint_id):
            raise ApiError("not_found", "no such webhook endpoint for this vendor account")
        page = await webhook_store.deliveries_page(conn, endpoint_id, after=decode_cursor(query.after), limit=query.limit)
    next_cursor = encode_cursor(page[-1][0]) if len(page) == query.limit else None
    return json_response(schemas.WebhookDeliveryPage(items=[item for _, item in page], next=next_cursor))


# ---- the declarations -----------------------------------------------------------------------

EVERYONE = ALL_ROLES
READERS = auth.READ_EVERYTHING
VENDOR_READERS = auth.READ_EVERYTHING | {"vendor"}
WEBHOOK_OWNERS = frozenset({"admin", "vendor"})
REJECTIONS = frozenset(rejection.value for rejection in domain.Rejection)

PROJECTED = Header(
    PROJECTION_POSITION, "Every journal entry with position <= N is in the projection.",
    # A 404 about the vendor account itself is answered before the projection is read.
    on={200: True, 404: False},
)
REPLAYED = Header(
    "Idempotency-Replayed", "`true` when the answer is a replay of an earlier request with this key.",
    on={201: False}, schema={"type": "string", "enum": ["true"]},
)

ROUTES: list[Route] = [
    Route("POST", "/v1/principals", create_principal, {201: schemas.Principal}, roles=frozenset({"admin"}),
          body=schemas.PrincipalCreate, summary="Create a principal; its token is shown once."),
    Route("POST", "/v1/accounts", create_account, {200: schemas.Account, 201: schemas.Account},
          roles=frozenset({"admin"}), codes=frozenset({"owner_not_found", "account_exists"}),
          body=schemas.AccountCreate, summary="Create an account (idempotent by id)."),
    Route("GET", "/v1/accounts/{account_id}", get_account, {200: schemas.Account}, roles=EVERYONE,
          codes=frozenset({"forbidden", "not_found"}), path_ids=("account_id",),
          summary="An account with its committed balance."),
    Route("POST", "/v1/transfers", create_transfer, {201: schemas.Transfer}, roles=frozenset({"admin", "client"}),
          codes=REJECTIONS | {"queue_full"}, headers=(REPLAYED,),
          body=schemas.TransferCreate, idempotency=True, summary="Move money between two accounts of one currency."),
    Route("GET", "/v1/transfers/{transfer_id}", get_transfer, {200: schemas.Transfer}, roles=EVERYONE,
          codes=frozenset({"forbidden", "not_found"}), path_ids=("transfer_id",),
          summary="A committed transfer, read from the journal."),
    Route("GET", "/v1/vendors/{account_id}/transfers/{transfer_id}/verification", get_verification,
          {200: schemas.Verification}, roles=VENDOR_READERS,
          codes=frozenset({"forbidden", "not_found", "projection_behind", "too_many_waiters"}), headers=(PROJECTED,),
          path_ids=("account_id", "transfer_id"), query=WaitQuery,
          summary="Verify a transfer into a vendor account, from the projection."),
    Route("GET", "/v1/vendors/{account_id}/transfers", list_verifications, {200: schemas.VerificationPage},
          roles=VENDOR_READERS, codes=frozenset({"forbidden", "not_found"}), headers=(PROJECTED,),
          path_ids=("account_id",), query=PageQuery,
          summary="Transfers into a vendor account, from the projection, oldest first."),
    Route("GET", "/v1/journal", get_journal, {200: schemas.JournalEntry}, roles=READERS, query=JournalQuery,
          media=NDJSON, summary="Journal entries in position order, as NDJSON."),
    Route("GET", "/v1/journal/head", get_journal_head, {200: schemas.JournalHead}, roles=READERS,
          summary="Position and hash of the last entry."),
    Route("POST", "/v1/principals/{principal_id}/tokens", create_token, {201: schemas.TokenCreated},
          roles=frozenset({"admin"}), codes=frozenset({"not_found"}), path_ids=("principal_id",),
          summary="An extra token for the principal (rotation); shown once."),
    Route("GET", "/v1/principals/{principal_id}/tokens", list_tokens, {200: schemas.TokenList},
          roles=frozenset({"admin"}), codes=frozenset({"not_found"}), path_ids=("principal_id",),
          summary="The principal's tokens, never the tokens themselves."),
    Route("DELETE", "/v1/principals/{principal_id}/tokens/{token_id}", revoke_token, {204: None},
          roles=frozenset({"admin"}), codes=frozenset({"not_found"}), path_ids=("principal_id", "token_id"),
          summary="Revoke a token: refused on every API process within a second."),
    Route("GET", "/healthz", healthz, {200: schemas.Health}, public=True, summary="Liveness."),
    Route("GET", "/readyz", readyz, {200: schemas.Health, 503: schemas.Health}, public=True,
          summary="Database and NATS reachable."),
    Route("POST", "/v1/vendors/{account_id}/webhooks", create_webhook, {201: schemas.WebhookCreated},
          roles=WEBHOOK_OWNERS, codes=frozenset({"forbidden", "not_found", "webhook_url_not_allowed", "too_many_webhooks"}),
          body=schemas.WebhookCreate, path_ids=("account_id",),
          summary="Register a webhook endpoint; its signing secret is shown once."),
    Route("GET", "/v1/vendors/{account_id}/webhooks", list_webhooks, {200: schemas.WebhookPage},
          roles=WEBHOOK_OWNERS, codes=frozenset({"forbidden", "not_found"}), path_ids=("account_id",), query=PageQuery,
          summary="The vendor account's webhook endpoints, without their secrets."),
    Route("DELETE", "/v1/vendors/{account_id}/webhooks/{webhook_id}", delete_webhook, {204: None},
          roles=WEBHOOK_OWNERS, codes=frozenset({"forbidden", "not_found"}), path_ids=("account_id", "webhook_id"),
          summary="Delete a webhook endpoint: no delivery to it starts afterwards."),
    Route("GET", "/v1/vendors/{account_id}/webhooks/{webhook_id}/deliveries", list_webhook_deliveries,
          {200: schemas.WebhookDeliveryPage}, roles=WEBHOOK_OWNERS, codes=frozenset({"forbidden", "not_found"}),
          path_ids=("account_id", "webhook_id"), query=PageQuery,
          summary="The endpoint's deliveries, in journal order, with their attempts."),
]
