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
    ALL_ROLES, NDJSON, PROJECTION_POSITION, Call, Header, JournalQuery, PageQuery, Route, WaitQuery, decode_cursor,
    encode_cursor, json_response,
)
from api.framework import IdPageQuery, PointQuery, StatementQuery, decode_id_cursor, encode_id_cursor, parse_time
from api.problems import ApiError, problem_response
from ledger import committer as committer_mod
from ledger import domain, principals, store
from projector import store as projections

WAIT_POLL_S_MAX = 0.05


# ---- principals and accounts ----------------------------------------------------------------


async def create_principal(services, call: Call) -> web.Response:
    body: schemas.PrincipalCreate = call.body
    async with services.pool.connection() as conn:
        principal, token = await principals.create(conn, role=body.role, name=body.name)
    services.auth.remember(token, principal)
    return json_response(schemas.Principal(id=principal.id, role=body.role, name=body.name, token=token), status=201)


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
    query: PointQuery = call.query
    if query.at_position is not None or query.as_of is not None:
        return await _get_past_account(services, call, query)
    async with services.pool.connection() as conn:
        account = await store.account_with_balance(conn, call.ids["account_id"])
    _authorize_account(call.principal, account)
    return json_response(account)


async def _get_past_account(services, call: Call, query: PointQuery) -> web.Response:
    """The balance as it was, from the postings' stored `balance_after`: one index lookup."""
    async with services.pool.connection() as conn:
        if query.at_position is not None:
            past = await store.account_at_position(conn, call.ids["account_id"], query.at_position)
        else:
            past = await store.account_as_of(conn, call.ids["account_id"], parse_time(query.as_of))
    _authorize_account(call.principal, past.account if past is not None else None)
    if past.account.position > past.head:
        raise ApiError("position_out_of_range", f"position {past.account.position} is past the journal head {past.head}")
    return json_response(past.account)


async def list_accounts(services, call: Call) -> web.Response:
    """The caller's own accounts (admin and auditor: all), in id order."""
    query: IdPageQuery = call.query
    owner = None if call.principal.role in auth.READ_EVERYTHING else call.principal.id
    async with services.pool.connection() as conn:
        items = await store.accounts_page(conn, owner_id=owner, after=decode_id_cursor(query.after), limit=query.limit)
    next_cursor = encode_id_cursor(items[-1].id) if len(items) == query.limit else None
    return json_response(schemas.AccountPage(items=items, next=next_cursor))


async def get_statement(services, call: Call) -> web.Response:
    """The account's entries from the journal (never stale), one consistent read."""
    query: StatementQuery = call.query
    account_id = call.ids["account_id"]
    account = services.accounts.get(account_id)
    async with services.pool.connection() as conn:
        if account is None:
            account = await store.account_by_id(conn, account_id)
        _authorize_account(call.principal, account)
        items = await store.statement(
            conn, account_id, after=decode_cursor(query.after), limit=query.limit, reference=query.reference
        )
    services.remember_account(account)
    next_cursor = encode_cursor(items[-1].position) if len(items) == query.limit else None
    return json_response(schemas.StatementPage(items=items, next=next_cursor))


def _authorize_account(principal: Principal, account: schemas.Account | store.AccountRow | None) -> None:
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


def refund_request_hash(transfer_id: uuid.UUID, body: schemas.RefundCreate) -> bytes:
    """As `request_hash`, for a refund: tagged, so one key cannot mean a transfer and a refund."""
    canonical = msgspec.json.encode(
        ["refund", str(transfer_id), body.amount, body.reference, sorted(body.metadata.items())]
    )
    return hashlib.sha256(canonical).digest()


async def create_refund(services, call: Call) -> web.Response:
    """Return (part of) a payment to a vendor account. What cannot change (the original's accounts,
    kind and amount) is checked here; how much of it is already refunded is decided by the
    committer in batch order, so racing refunds never pass the original."""
    body: schemas.RefundCreate = call.body
    transfer_id = call.ids["transfer_id"]
    async with services.pool.connection() as conn:
        original = await store.entry_by_transfer_id(conn, transfer_id)
        receiver = await store.account_by_id(conn, original.to_account_id) if original is not None else None
    if call.principal.role != "admin" and (receiver is None or receiver.owner_id != call.principal.id):
        raise ApiError("forbidden")  # an absent transfer is no one's, as for reads
    if original is None:
        raise ApiError("not_found")
    if original.kind != "transfer" or receiver is None or receiver.kind != "vendor":
        raise ApiError("not_refundable")
    command = domain.TransferCommand(
        principal_id=call.principal.id,
        principal_role=call.principal.role,
        idempotency_key=call.idempotency_key,
        request_hash=refund_request_hash(transfer_id, body),
        from_account_id=original.to_account_id,
        to_account_id=original.from_account_id,
        amount=body.amount,
        currency=original.currency,
        reference=body.reference,
        metadata=body.metadata,
        kind="refund",
        refund_of=transfer_id,
        refundable_amount=original.amount,
    )
    return await _commit(services, command)


async def _commit(services, command: domain.TransferCommand) -> web.Response:
    try:
        answer = await services.committer.submit(command)
    except committer_mod.QueueFull:
        raise ApiError("queue_full") from None
    except committer_mod.Unavailable as error:
        raise ApiError(
            "unavailable", f"the refund may or may not be committed; retry with the same Idempotency-Key: {error}"
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
    deadline = time.monotonic() + min(query.wait_ms, services.settings.wait_ms_max) / 1000
    while True:
        async with services.pool.connection() as conn:
            position, verification = await projections.verification(
                conn, vendor_id, transfer_id, services.settings.projector_name
            )
        if position >= query.min_position:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiError(
                "projection_behind",
                f"projection is at {position}, below min_position {query.min_position}",
                retry_after_s=1,
            )
        await services.watermark.wait_beyond(position, timeout_s=min(remaining, WAIT_POLL_S_MAX))
    headers = {PROJECTION_POSITION: str(position)}
    if verification is None:
        error = ApiError("not_found", "no such transfer to this vendor in the projection")
        response = _problem_with_headers(error, headers)
        return response
    return json_response(verification, headers=headers)


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
    checks = {"database": "ok", "nats": "ok" if services.bus.connected else "down"}
    try:
        async with asyncio.timeout(2):
            async with services.pool.connection(timeout=2) as conn:
                await store.ping(conn)
    except Exception:
        checks["database"] = "down"
    ready = all(v == "ok" for v in checks.values())
    return json_response(schemas.Health(status="ready" if ready else "not_ready", checks=checks), status=200 if ready else 503)


# ---- the declarations -----------------------------------------------------------------------

EVERYONE = ALL_ROLES
READERS = auth.READ_EVERYTHING
VENDOR_READERS = auth.READ_EVERYTHING | {"vendor"}
REJECTIONS = frozenset(rejection.value for rejection in domain.Rejection if rejection not in domain.REFUND_ONLY)
# A refund's accounts and currency are the original's, so same_account, account_not_found and
# currency_mismatch cannot happen; what it can meet, in the contract's order.
REFUND_CODES = frozenset({
    "forbidden", "not_found", "idempotency_key_reused", "not_refundable", "refund_exceeds_transfer",
    "insufficient_funds", "balance_limit_exceeded", "queue_full",
})

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
          codes=frozenset({"forbidden", "not_found", "position_out_of_range"}), path_ids=("account_id",),
          query=PointQuery, summary="An account with its committed balance, or its balance at a position or time."),
    Route("GET", "/v1/accounts", list_accounts, {200: schemas.AccountPage}, roles=EVERYONE, query=IdPageQuery,
          summary="The caller's own accounts (admin, auditor: all), in id order."),
    Route("GET", "/v1/accounts/{account_id}/entries", get_statement, {200: schemas.StatementPage}, roles=EVERYONE,
          codes=frozenset({"forbidden", "not_found"}), path_ids=("account_id",), query=StatementQuery,
          summary="The account's statement, read from the journal, oldest first."),
    Route("POST", "/v1/transfers/{transfer_id}/refunds", create_refund, {201: schemas.Transfer},
          roles=frozenset({"admin", "vendor"}),
          codes=REFUND_CODES,
          headers=(REPLAYED,), body=schemas.RefundCreate, path_ids=("transfer_id",), idempotency=True,
          summary="Refund (part of) a payment to a vendor account, back to the payer."),
    Route("POST", "/v1/transfers", create_transfer, {201: schemas.Transfer}, roles=frozenset({"admin", "client"}),
          codes=REJECTIONS | {"queue_full"}, headers=(REPLAYED,),
          body=schemas.TransferCreate, idempotency=True, summary="Move money between two accounts of one currency."),
    Route("GET", "/v1/transfers/{transfer_id}", get_transfer, {200: schemas.Transfer}, roles=EVERYONE,
          codes=frozenset({"forbidden", "not_found"}), path_ids=("transfer_id",),
          summary="A committed transfer, read from the journal."),
    Route("GET", "/v1/vendors/{account_id}/transfers/{transfer_id}/verification", get_verification,
          {200: schemas.Verification}, roles=VENDOR_READERS,
          codes=frozenset({"forbidden", "not_found", "projection_behind"}), headers=(PROJECTED,),
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
    Route("GET", "/healthz", healthz, {200: schemas.Health}, public=True, summary="Liveness."),
    Route("GET", "/readyz", readyz, {200: schemas.Health, 503: schemas.Health}, public=True,
          summary="Database and NATS reachable."),
]
