"""Handlers that write the journal: transfers, refunds and holds, through the group commit."""

from __future__ import annotations

import uuid

from aiohttp import web

import schemas
from api import owners
from api.framework import Call, json_response
from api.problems import ApiError
from ledger import commands, domain, store
from ledger import committer as committer_mod


# ---- transfers ------------------------------------------------------------------------------


def transfer_body(entry: schemas.JournalEntry) -> schemas.Transfer:
    return schemas.transfer_from_entry(entry)


def _caller(call: Call) -> commands.Caller:
    return commands.Caller(call.principal.id, call.principal.role, call.idempotency_key)


async def create_transfer(services, call: Call) -> web.Response:
    return await _commit(services, commands.transfer(_caller(call), call.body))


async def create_refund(services, call: Call) -> web.Response:
    """Return (part of) a payment to a vendor account (the route's ownership found it, and the
    caller owns the receiver). What cannot change (the original's accounts, kind and amount) is
    checked here; how much of it is already refunded is decided by the committer in batch order,
    so racing refunds never pass the original."""
    return await _commit(services, refund_command(_caller(call), call.resource, call.body))


def refund_command(caller: commands.Caller, payment: owners.Payment, body: schemas.RefundCreate) -> domain.EntryCommand:
    """The refund of a payment the caller may refund (a route's, or a batch item's)."""
    if payment.receiver is None or not commands.refundable(payment.entry, payment.receiver.kind):
        raise ApiError("not_refundable")
    return commands.refund(caller, payment.entry, body)


async def _commit(services, command: domain.EntryCommand) -> web.Response:
    """Submit to the group commit and answer: 201 (new or replayed), or the rejection's problem."""
    answer = await submit(services, command)
    headers = {"Idempotency-Replayed": "true"} if answer.replayed else None
    return json_response(transfer_body(answer.entry), status=201, headers=headers)


async def get_transfer(services, call: Call) -> web.Response:
    return json_response(transfer_body(call.resource))


# ---- holds -----------------------------------------------------------------------------------


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
    answer = await submit(services, await hold_command(services, _caller(call), call.body))
    return await _hold_answer(services, answer, as_placed=True)


async def hold_command(services, caller: commands.Caller, body: schemas.HoldCreate) -> domain.EntryCommand:
    """A new hold (a route's, or a batch item's), its currency's holding account made first."""
    await _ensure_holding_account(services, body.from_account_id, body.currency)
    return commands.hold(caller, body)


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


async def submit(services, command: domain.EntryCommand) -> committer_mod.Answer:
    """The group commit's answer, or its failure as a problem. A lost connection may have come
    after COMMIT was sent: the outcome is unknown, and only a retry with the same key tells (a
    replay if it committed, a fresh decision if not)."""
    try:
        answer = await services.committer.submit(command)
    except committer_mod.QueueFull:
        raise ApiError("queue_full") from None
    except committer_mod.Unavailable as error:
        raise ApiError(
            "unavailable", f"the {command.kind} may or may not be committed; retry with the same Idempotency-Key: {error}"
        ) from None
    if answer.rejection is not None:
        raise ApiError(answer.rejection.value)
    return answer


async def _hold_answer(services, answer: committer_mod.Answer, *, as_placed: bool = False) -> web.Response:
    """201 with the hold the committed (or replayed) entry names, as it is now (or as placed)."""
    async with services.pool.connection() as conn:
        hold = await store.hold_by_id(conn, answer.entry.hold_id)
    headers = {"Idempotency-Replayed": "true"} if answer.replayed else None
    return json_response(hold_body(hold, as_placed=as_placed), status=201, headers=headers)


# Capture, void and read: the route's ownership found the hold (`call.resource`) and the caller may
# act on it; whether it is still open is decided in batch order.


async def capture_hold(services, call: Call) -> web.Response:
    answer = await submit(services, commands.capture(_caller(call), call.resource, call.body))
    return await _hold_answer(services, answer)


async def void_hold(services, call: Call) -> web.Response:
    answer = await submit(services, commands.void(_caller(call), call.resource))
    return await _hold_answer(services, answer)


async def get_hold(services, call: Call) -> web.Response:
    return json_response(hold_body(call.resource))
