"""Handlers that write the journal: transfers, refunds and holds, through the group commit."""

from __future__ import annotations

import hashlib
import uuid

import msgspec
from aiohttp import web

import schemas
from api import auth
from api.framework import Call, json_response
from api.problems import ApiError
from ledger import committer as committer_mod
from ledger import domain, store


# ---- transfers ------------------------------------------------------------------------------


def request_hash(body: schemas.TransferCreate) -> bytes:
    """What "the same body" means: the decoded request, not its spelling (spaces, key order).
    msgspec writes a UUID as `str()` does, in C: the bytes, and so the stored hashes of keys, are
    those of the earlier `str(id)` form."""
    canonical = msgspec.json.encode(
        [body.from_account_id, body.to_account_id, body.amount, body.currency, body.reference,
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
        ["refund", transfer_id, body.amount, body.reference, sorted(body.metadata.items())]
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
    answer = await _submit(services, command, command.kind)
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
    return hashlib.sha256(msgspec.json.encode(parts)).digest()


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
    """The group commit's answer, or its failure as a problem. A lost connection may have come
    after COMMIT was sent: the outcome is unknown, and only a retry with the same key tells (a
    replay if it committed, a fresh decision if not)."""
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


