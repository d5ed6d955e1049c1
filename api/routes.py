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
from typing import Annotated

import msgspec
from aiohttp import web

import schemas
from api import auth
from api.auth import Principal
from api.framework import (
    ALL_ROLES, ANSWER_STARTED, NDJSON, PROJECTION_POSITION, Call, Header, JournalQuery, PageQuery, Route, WaitQuery, decode_cursor,
    encode_cursor, json_response,
)
from api.framework import IdPageQuery, PointQuery, StatementQuery, decode_id_cursor, encode_id_cursor, parse_time
from api.problems import ApiError, problem_response
from ledger import committer as committer_mod
from ledger import domain, merkle, metrics, principals, store, tree, tree_store, webhook_store, webhooks
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
    return await _commit(services, command)


# A capture is a payment to the vendor like a transfer, so it can be refunded like one.
REFUNDABLE_KINDS = frozenset({"transfer", "capture"})


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
    if original.kind not in REFUNDABLE_KINDS or receiver is None or receiver.kind != "vendor":
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
    """Submit to the group commit and answer: 201 (new or replayed), or the rejection's problem."""
    try:
        answer = await services.committer.submit(command)
    except committer_mod.QueueFull:
        raise ApiError("queue_full") from None
    except committer_mod.Unavailable as error:
        # The connection may have died after COMMIT was sent: the outcome is unknown, and only a
        # retry with the same key tells (a replay if it committed, a fresh decision if not).
        raise ApiError(
            "unavailable", f"the {command.kind} may or may not be committed; retry with the same Idempotency-Key: {error}"
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


# ---- holds -----------------------------------------------------------------------------------

# The principal the expiry sweeper submits as: no one's key space, so its keys never meet a caller's.
SWEEPER_PRINCIPAL = uuid.UUID(int=0)


def hold_request_hash(*parts) -> bytes:
    """As `request_hash`, for a hold's step: tagged with the step, so one key means one thing."""
    return hashlib.sha256(msgspec.json.encode([str(p) if isinstance(p, uuid.UUID) else p for p in parts])).digest()


def hold_body(hold: domain.HoldState, *, as_placed: bool = False) -> schemas.Hold:
    """The hold as it is now, or (`as_placed`: the answer to placing it, replays included) as it
    was when placed: pending, nothing captured."""
    closed = not as_placed and hold.status != "pending"
    return schemas.Hold(
        id=hold.id, from_account_id=hold.from_account_id, to_account_id=hold.to_account_id, amount=hold.amount,
        currency=hold.currency, reference=hold.reference, metadata=hold.metadata,
        status="pending" if as_placed else hold.status, expires_at=domain.format_timestamp(hold.expires_at),
        position=hold.position, captured_amount=hold.captured_amount if closed else 0,
        transfer_id=hold.transfer_id if closed else None, closed_position=hold.closed_position if closed else None,
    )


async def create_hold(services, call: Call) -> web.Response:
    """Reserve money of a wallet for a vendor: one `hold` entry, wallet -> the currency's holding
    account. The holding account is created on first use (a system account with a derived id)."""
    body: schemas.HoldCreate = call.body
    await _ensure_holding_account(services, body.from_account_id, body.currency)
    command = domain.TransferCommand(
        principal_id=call.principal.id,
        principal_role=call.principal.role,
        idempotency_key=call.idempotency_key,
        request_hash=hold_request_hash(
            "hold", body.from_account_id, body.to_account_id, body.amount, body.currency, body.reference,
            sorted(body.metadata.items()), body.expires_in_s,
        ),
        from_account_id=body.from_account_id,
        to_account_id=body.to_account_id,
        amount=body.amount,
        currency=body.currency,
        reference=body.reference,
        metadata=body.metadata,
        kind="hold",
        hold_id=uuid.uuid4(),
        expires_in_s=body.expires_in_s,
    )
    answer = await _submit(services, command, "hold")
    async with services.pool.connection() as conn:
        hold = await store.hold_by_id(conn, answer.entry.hold_id)
    headers = {"Idempotency-Replayed": "true"} if answer.replayed else None
    return json_response(hold_body(hold, as_placed=True), status=201, headers=headers)


async def _ensure_holding_account(services, source_id: uuid.UUID, currency: str) -> None:
    """Only for a source account that exists in that currency: anything else is refused by the
    decision before the holding account matters, so callers cannot create one per currency."""
    holding_id = domain.holding_account_id(currency)
    if holding_id in services.accounts:
        return
    async with services.pool.connection() as conn:
        source = services.accounts.get(source_id) or await store.account_by_id(conn, source_id)
        if source is None or source.currency != currency:
            return
        await store.ensure_holding_account(conn, currency)
        services.remember_account(await store.account_by_id(conn, holding_id))


async def _submit(services, command: domain.TransferCommand, what: str) -> committer_mod.Answer:
    try:
        answer = await services.committer.submit(command)
    except committer_mod.QueueFull:
        raise ApiError("queue_full") from None
    except committer_mod.Unavailable as error:
        raise ApiError(
            "unavailable", f"the {what} may or may not be committed; retry with the same Idempotency-Key: {error}"
        ) from None
    if answer.rejection is not None:
        raise ApiError(answer.rejection.value)
    return answer


async def _hold_for(services, call: Call, *, parties: tuple[str, ...]) -> domain.HoldState:
    """The hold, if the caller may act on it: admin and auditor reach every hold (404 when
    absent); others only holds whose `parties` (account fields) they own, and an absent hold is
    no one's (403, so ids cannot be probed)."""
    async with services.pool.connection() as conn:
        hold = await store.hold_by_id(conn, call.ids["hold_id"])
        reads_everything = call.principal.role in auth.READ_EVERYTHING
        if hold is None:
            raise ApiError("not_found" if reads_everything else "forbidden")
        if not reads_everything:
            owners = await store.account_owners(conn, [getattr(hold, name) for name in parties])
            if call.principal.id not in owners.values():
                raise ApiError("forbidden")
    return hold


async def _close_hold(services, call: Call, hold: domain.HoldState, *, kind: str, amount: int, digest: bytes):
    """Submit a capture or void; whether the hold is still open is decided in batch order."""
    command = domain.TransferCommand(
        principal_id=call.principal.id,
        principal_role=call.principal.role,
        idempotency_key=call.idempotency_key,
        request_hash=digest,
        from_account_id=hold.from_account_id,
        to_account_id=hold.to_account_id,
        amount=amount,
        currency=hold.currency,
        reference=hold.reference,
        metadata={},
        kind=kind,
        hold_id=hold.id,
    )
    answer = await _submit(services, command, kind)
    async with services.pool.connection() as conn:
        closed = await store.hold_by_id(conn, hold.id)
    headers = {"Idempotency-Replayed": "true"} if answer.replayed else None
    return json_response(hold_body(closed), status=201, headers=headers)


async def capture_hold(services, call: Call) -> web.Response:
    body: schemas.HoldCapture = call.body
    hold = await _hold_for(services, call, parties=("to_account_id",))
    amount = body.amount if body.amount is not None else hold.amount
    digest = hold_request_hash("capture", hold.id, body.amount)
    return await _close_hold(services, call, hold, kind="capture", amount=amount, digest=digest)


async def void_hold(services, call: Call) -> web.Response:
    hold = await _hold_for(services, call, parties=("from_account_id", "to_account_id"))
    return await _close_hold(services, call, hold, kind="void", amount=hold.amount,
                             digest=hold_request_hash("void", hold.id))


async def get_hold(services, call: Call) -> web.Response:
    hold = await _hold_for(services, call, parties=("from_account_id", "to_account_id"))
    return json_response(hold_body(hold))


def expire_command(hold: domain.HoldState) -> domain.TransferCommand:
    """What the expiry sweeper submits for a due hold. Its key is the hold's, so a second sweeper
    (another process) replays or is refused `hold_not_pending`, never expiring a hold twice."""
    return domain.TransferCommand(
        principal_id=SWEEPER_PRINCIPAL, principal_role="system", idempotency_key=f"expire:{hold.id}",
        request_hash=hold_request_hash("expire", hold.id), from_account_id=hold.from_account_id,
        to_account_id=hold.to_account_id, amount=hold.amount, currency=hold.currency, reference=hold.reference,
        metadata={}, kind="expire", hold_id=hold.id,
    )


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


# ---- proofs: the journal as a Merkle tree ---------------------------------------------------

TreeSize = Annotated[int, msgspec.Meta(ge=1, le=schemas.POSITION_MAX)]


class TreeQuery(msgspec.Struct, forbid_unknown_fields=True):
    tree_size: TreeSize | msgspec.UnsetType = msgspec.UNSET


class InclusionQuery(msgspec.Struct, forbid_unknown_fields=True):
    position: TreeSize
    tree_size: TreeSize | msgspec.UnsetType = msgspec.UNSET


class ConsistencyQuery(msgspec.Struct, forbid_unknown_fields=True):
    from_size: TreeSize
    to_size: TreeSize | msgspec.UnsetType = msgspec.UNSET


def _tree_size(asked: int | msgspec.UnsetType, head: int) -> int:
    """The asked size, or the journal head; past the head is a 422."""
    if asked is msgspec.UNSET:
        return head
    if asked > head:
        raise ApiError("tree_size_out_of_range", f"tree size {asked} is past the journal head {head}")
    return asked


async def _tree_nodes(conn, keys: set, size: int) -> dict:
    try:
        return await tree.read_nodes(conn, keys, size)
    except tree.TreeBehind as error:
        raise ApiError("tree_behind", str(error)) from None


async def get_tree(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        size = _tree_size(call.query.tree_size, (await store.journal_head(conn)).position)
        nodes = await _tree_nodes(conn, merkle.root_keys(size), size)
    return json_response(schemas.TreeHead(tree_size=size, root_hash=merkle.root(size, nodes).hex()))


async def get_inclusion_proof(services, call: Call) -> web.Response:
    query: InclusionQuery = call.query
    async with services.pool.connection() as conn:
        head = (await store.journal_head(conn)).position
        if call.principal.role not in auth.READ_EVERYTHING:
            await _authorize_entry(conn, call.principal, query.position)
        size = _tree_size(query.tree_size, head)
        if query.position > size:
            raise ApiError("position_out_of_range", f"position {query.position} is past the tree size {size}")
        index = query.position - 1
        nodes = await _tree_nodes(conn, merkle.inclusion_keys(index, size), size)
    return json_response(schemas.InclusionProof(
        position=query.position, tree_size=size, leaf_hash=nodes[(0, index)].hex(),
        audit_path=[digest.hex() for digest in merkle.inclusion_proof(index, size, nodes)],
    ))


async def _authorize_entry(conn, principal: Principal, position: int) -> None:
    """A client or vendor proves only entries that touch an account it owns; an entry that does
    not exist is nobody's, so probing positions past the head gets 403 as well."""
    entries = await store.entries_by_positions(conn, [position])
    if not entries:
        raise ApiError("forbidden")
    entry = entries[0]
    touched = {entry.from_account_id, entry.to_account_id} | {p.account_id for p in entry.postings}
    owners = await store.account_owners(conn, list(touched))
    if principal.id not in owners.values():
        raise ApiError("forbidden")


async def get_consistency_proof(services, call: Call) -> web.Response:
    query: ConsistencyQuery = call.query
    async with services.pool.connection() as conn:
        to_size = _tree_size(query.to_size, (await store.journal_head(conn)).position)
        if query.from_size > to_size:
            raise ApiError("tree_size_out_of_range", f"from_size {query.from_size} is past the tree size {to_size}")
        nodes = await _tree_nodes(conn, merkle.consistency_keys(query.from_size, to_size), to_size)
    proof = merkle.consistency_proof(query.from_size, to_size, nodes)
    return json_response(schemas.ConsistencyProof(from_size=query.from_size, to_size=to_size,
                                                  proof=[digest.hex() for digest in proof]))


async def get_latest_checkpoint(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        row = await tree_store.latest_tree_head(conn)
    if row is None:
        raise ApiError("not_found", "no tree head has been signed yet")
    return json_response(schemas.SignedTreeHead(
        tree_size=row.tree_size, root_hash=row.root_hash, hash=row.hash, signed_at=row.signed_at,
        signature=row.signature, public_key=row.public_key,
    ))


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
REJECTIONS = frozenset(
    rejection.value for rejection in domain.Rejection if rejection not in domain.REFUND_ONLY | domain.HOLD_ONLY
)
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
    Route("GET", "/v1/journal/tree", get_tree, {200: schemas.TreeHead}, roles=EVERYONE,
          codes=frozenset({"tree_size_out_of_range", "tree_behind"}), query=TreeQuery,
          summary="The RFC 9162 Merkle root of the journal's first tree_size entries (default: all)."),
    Route("GET", "/v1/journal/proofs/inclusion", get_inclusion_proof, {200: schemas.InclusionProof}, roles=EVERYONE,
          codes=frozenset({"forbidden", "tree_size_out_of_range", "position_out_of_range", "tree_behind"}),
          query=InclusionQuery,
          summary="RFC 9162 inclusion proof of the entry at position in the tree of tree_size entries."),
    Route("GET", "/v1/journal/proofs/consistency", get_consistency_proof, {200: schemas.ConsistencyProof},
          roles=EVERYONE, codes=frozenset({"tree_size_out_of_range", "tree_behind"}), query=ConsistencyQuery,
          summary="RFC 9162 consistency proof: the tree of from_size entries is a prefix of the tree of to_size."),
    Route("GET", "/v1/journal/checkpoints/latest", get_latest_checkpoint, {200: schemas.SignedTreeHead},
          roles=EVERYONE, codes=frozenset({"not_found"}),
          summary="The latest signed tree head (Ed25519); verify it against a pinned public key."),
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
    Route("POST", "/v1/holds", create_hold, {201: schemas.Hold}, roles=frozenset({"admin", "client"}),
          codes=REJECTIONS | {"queue_full"}, headers=(REPLAYED,), body=schemas.HoldCreate, idempotency=True,
          summary="Reserve money of a wallet for a vendor, until captured, voided or expired."),
    Route("POST", "/v1/holds/{hold_id}/capture", capture_hold, {201: schemas.Hold},
          roles=frozenset({"admin", "client", "vendor"}),
          codes=frozenset({"forbidden", "not_found", "idempotency_key_reused", "hold_not_pending", "hold_expired",
                           "capture_exceeds_hold", "balance_limit_exceeded", "queue_full"}),
          headers=(REPLAYED,), body=schemas.HoldCapture, path_ids=("hold_id",), idempotency=True,
          summary="Pay (part of) a hold to its vendor; the rest goes back to the wallet, in one entry."),
    Route("POST", "/v1/holds/{hold_id}/void", void_hold, {201: schemas.Hold},
          roles=frozenset({"admin", "client", "vendor"}),
          codes=frozenset({"forbidden", "not_found", "idempotency_key_reused", "hold_not_pending",
                           "balance_limit_exceeded", "queue_full"}),
          headers=(REPLAYED,), path_ids=("hold_id",), idempotency=True,
          summary="Release a hold: the whole amount goes back to the wallet."),
    Route("GET", "/v1/holds/{hold_id}", get_hold, {200: schemas.Hold}, roles=EVERYONE,
          codes=frozenset({"forbidden", "not_found"}), path_ids=("hold_id",), summary="A hold, as it is now."),
]
