"""Requests as commands: one builder per kind of request, with the hash that tells replays apart.

Each function builds the `domain.EntryCommand` the committer decides, with the request hash that
tells a replay from a reused key. Pure (no I/O): the single routes and the items of a batch build
their commands with the same functions, so one request means one command whichever way it
arrives. What a command needs from the ledger's state (a refund's original entry, a hold's state)
is read by the caller and passed in.

A request hash is SHA-256 over msgspec's JSON of the decoded request, not of its spelling (spaces,
key order): stored idempotency rows compare them, so these bytes never change. msgspec writes a
UUID as `str()` does, so the hashes of rows stored before it are those of the earlier `str(id)`
form. Every kind but the transfer (the first) is tagged with its name, so that one key cannot mean
two kinds of request.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import msgspec

import schemas
from ledger import controls
from ledger.domain import EntryCommand, HoldState

# The principal the hold-expiry sweeper submits as: no one's key space, so its keys never meet a caller's.
SWEEPER_PRINCIPAL = uuid.UUID(int=0)
# A capture is a payment to the vendor like a transfer, so it can be refunded like one.
REFUNDABLE_KINDS = frozenset({"transfer", "capture"})


@dataclass(frozen=True, slots=True)
class Caller:
    """Who submits a command, under which idempotency key (the header's, or a batch item's)."""

    principal_id: uuid.UUID
    role: str
    idempotency_key: str


def request_hash(*parts: Any) -> bytes:
    return hashlib.sha256(msgspec.json.encode(parts)).digest()


def transfer(caller: Caller, body: schemas.TransferCreate) -> EntryCommand:
    digest = request_hash(
        body.from_account_id, body.to_account_id, body.amount, body.currency, body.reference,
        sorted(body.metadata.items()),
    )
    return EntryCommand(
        principal_id=caller.principal_id, principal_role=caller.role, idempotency_key=caller.idempotency_key,
        request_hash=digest, from_account_id=body.from_account_id, to_account_id=body.to_account_id,
        amount=body.amount, currency=body.currency, reference=body.reference, metadata=body.metadata,
    )


def refundable(original: schemas.JournalEntry, receiver_kind: str) -> bool:
    """Whether an entry can be refunded at all (`not_refundable` otherwise): a payment (a transfer
    or a capture) into a vendor account. How much of it is left is decided in batch order."""
    return original.kind in REFUNDABLE_KINDS and receiver_kind == "vendor"


def refund(caller: Caller, original: schemas.JournalEntry, body: schemas.RefundCreate) -> EntryCommand:
    """Money back from the original's receiver to its payer, in its currency; its amount is the
    most that the original's refunds may add up to."""
    digest = request_hash(
        "refund", original.transfer_id, body.amount, body.reference, sorted(body.metadata.items())
    )
    return EntryCommand(
        principal_id=caller.principal_id, principal_role=caller.role, idempotency_key=caller.idempotency_key,
        request_hash=digest, from_account_id=original.to_account_id, to_account_id=original.from_account_id,
        amount=body.amount, currency=original.currency, reference=body.reference, metadata=body.metadata,
        kind="refund", refund_of=original.transfer_id, refundable_amount=original.amount,
    )


def hold(caller: Caller, body: schemas.HoldCreate, *, new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> EntryCommand:
    """A new hold, with a new id (a replay answers with the first one's)."""
    digest = request_hash(
        "hold", body.from_account_id, body.to_account_id, body.amount, body.currency, body.reference,
        sorted(body.metadata.items()), body.expires_in_s,
    )
    return EntryCommand(
        principal_id=caller.principal_id, principal_role=caller.role, idempotency_key=caller.idempotency_key,
        request_hash=digest, from_account_id=body.from_account_id, to_account_id=body.to_account_id,
        amount=body.amount, currency=body.currency, reference=body.reference, metadata=body.metadata,
        kind="hold", hold_id=new_id(), expires_in_s=body.expires_in_s,
    )


def capture(caller: Caller, hold: HoldState, body: schemas.HoldCapture) -> EntryCommand:
    """No amount captures the whole hold; the hash keeps the request's own (absent) amount."""
    amount = body.amount if body.amount is not None else hold.amount
    return _closing(caller, hold, "capture", amount, request_hash("capture", hold.id, body.amount))


def void(caller: Caller, hold: HoldState) -> EntryCommand:
    return _closing(caller, hold, "void", hold.amount, request_hash("void", hold.id))


def expire(hold: HoldState) -> EntryCommand:
    """What the expiry sweeper submits for a due hold. Its key is the hold's, so a second sweeper
    (another process) replays or is refused `hold_not_pending`, never expiring a hold twice."""
    caller = Caller(SWEEPER_PRINCIPAL, "system", f"expire:{hold.id}")
    return _closing(caller, hold, "expire", hold.amount, request_hash("expire", hold.id))


def _closing(caller: Caller, hold: HoldState, kind: str, amount: int, digest: bytes) -> EntryCommand:
    """A step that closes a hold: its parties, currency and reference are the hold's; whether it
    is still open is decided in batch order."""
    return EntryCommand(
        principal_id=caller.principal_id, principal_role=caller.role, idempotency_key=caller.idempotency_key,
        request_hash=digest, from_account_id=hold.from_account_id, to_account_id=hold.to_account_id,
        amount=amount, currency=hold.currency, reference=hold.reference, metadata={}, kind=kind, hold_id=hold.id,
    )


def account_change(principal_id: uuid.UUID, account_id: uuid.UUID, currency: str,
                   change: controls.ControlChange) -> EntryCommand:
    """A change of an account's controls (an admin's): an account entry, from and to the account,
    no amount. It has no idempotency key: it sets fields to values, so a repeat changes nothing
    more (it only records the same controls again)."""
    return EntryCommand(
        principal_id=principal_id, principal_role="admin", idempotency_key="", request_hash=b"",
        from_account_id=account_id, to_account_id=account_id, amount=0, currency=currency, reference="",
        metadata={}, kind="account", change=change,
    )
