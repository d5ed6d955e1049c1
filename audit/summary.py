"""A range of plain transfers checked from its rows alone, in a worker process, and its summary.

`summarize` checks the rows; a `Summary` is what the replay needs of the range to go past it
without its entries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

import msgspec

from audit import entries
from audit.entries import HashedEntry
from schemas import JournalEntry, Verification


@dataclass(frozen=True, slots=True)
class Summary:
    """A range of positions (after, upto] that a worker found plain (`summarize`): what the replay
    needs of it to go on, without its entries."""

    after: int
    upto: int
    prev_hash: str  # the stored prev_hash of the range's first entry
    hash: str  # the stored hash of its last entry
    starts: dict[int, int]  # account (its UUID's integer) -> its balance before the range, as stored
    ends: dict[int, int]  # account -> its balance after the range
    payments: bytes  # `verified_values` of each payment the projection must have verified, in order (msgpack)
    hashes: list[str] | None  # every entry's hash, in order, when the Merkle tree check needs them


# An account as a worker knows it: its text form -> (kind, currency, its UUID's integer).
AccountsByText = Mapping[str, tuple[str, str, int]]

# A verification's fields that its entry determines -> the entry's name for each (the parties
# are named for their roles in a payment).
_AS_PAYMENT = {"vendor_account_id": "to_account_id", "payer_account_id": "from_account_id"}
VERIFIED_FIELDS = {name: _AS_PAYMENT.get(name, name) for name in Verification.__struct_fields__
                   if _AS_PAYMENT.get(name, name) in JournalEntry.__struct_fields__}
# Those the hashed form holds (all but the entry's own hash), in the verification's order.
_HASHED_VERIFIED = {name: of for name, of in VERIFIED_FIELDS.items() if of in HashedEntry.__struct_fields__}
_verified_values = attrgetter(*_HASHED_VERIFIED)
_payments_encoder = msgspec.msgpack.Encoder()


def verified_values(rows: list[Verification]) -> bytes:
    """The verification rows, read with their UUIDs as text, as `Summary.payments` holds the
    payments: equal bytes when each row says of its entry exactly what it must."""
    return _payments_encoder.encode([(*_verified_values(row), row.hash) for row in rows])


def summarize(
    rows: Sequence[Sequence], *, after: int, upto: int, accounts: AccountsByText, projector_position: int,
    with_hashes: bool,
) -> Summary | None:
    """The summary of the rows of the positions (after, upto], or None unless every entry there
    is a plain transfer that no check of `Replay.feed` could fault given the state before the
    range: positions after+1..upto exactly, each prev_hash the previous entry's hash, each hash
    the recomputed one, the postings exactly (from, -amount), (to, +amount) between existing
    accounts of the entry's currency, each stored balance after the previous one plus the posting
    and not negative unless the account is a system one. What it cannot know in the range is
    left to `Replay.feed_summary`: the chain into its first entry, and that the balances before it
    (`starts`, implied by the stored balances after) are the replayed ones. Then every stored
    balance after is the replayed one, so the overdraft check on the stored ones is exact. None
    sends the range to the entry-by-entry replay, which locates whatever is wrong."""
    if not rows:
        return None
    (first_prev,) = _prev_hash(rows[0])
    if not first_prev.isascii():  # as the hash takes it; each next one is the digest before it
        return None
    walked = _walk(rows, after, accounts, projector_position, first_prev)
    if walked is None or walked.position != upto:
        return None
    return Summary(after, upto, first_prev, walked.digest, walked.starts, walked.ends,
                   _payments_encoder.encode(walked.payments), walked.hashes if with_hashes else None)


@dataclass(slots=True)
class _Walked:
    """What `_walk` found in a range of plain transfers."""

    position: int  # the last entry's
    digest: str  # its stored hash
    starts: dict[int, int]  # account (its UUID's integer) -> its balance before the range, as stored
    ends: dict[int, int]  # account -> its balance after the range
    payments: list[tuple]
    hashes: list[str]


# What `_walk` reads of a row. A plain transfer is an entry whose fields with a default all hold
# it (its kind "transfer", no refund, no hold): `entries.at_defaults`.
_walked = entries.columns("position", "prev_hash", "hash", "from_account_id", "to_account_id", "amount", "currency",
                          "account_ids", "amounts", "balances_after")
_prev_hash = entries.columns("prev_hash")
_payment = entries.columns(*_HASHED_VERIFIED.values(), "hash")  # as `verified_values` reads a verification


def _plain_transfer_hash(row: Sequence) -> str | None:
    """The recomputed hash of a plain transfer that is not written out (its metadata, or text
    that JSON escapes), None for any other entry (`written_out_hash` is so only for plain ones)."""
    return entries.recomputed_hash(row) if entries.at_defaults(row) else None


def _walk(rows: Sequence[Sequence], after: int, accounts: AccountsByText, projector_position: int,
          digest: str) -> _Walked | None:
    """`summarize`'s checks, entry by entry from the position after `after` whose prev_hash is
    `digest`; None at the first that fails. Written out in one loop: it runs once per entry."""
    position, account, written_out_hash = after, accounts.get, entries.written_out_hash
    starts, ends, payments, hashes = {}, {}, [], []
    for row, (at, prev_hash, stored, payer_id, payee_id, amount, currency, posted, amounts, balances_after) in zip(
            rows, map(_walked, rows)):
        position += 1
        if at != position or prev_hash != digest:
            return None
        try:
            (debit, credit), (debited, credited), (payer_after, payee_after) = posted, amounts, balances_after
        except (TypeError, ValueError):  # a column without postings, or not two
            return None
        if debit != payer_id or credit != payee_id or debited != -amount or credited != amount:
            return None
        payer, payee = account(payer_id), account(payee_id)
        if payer is None or payee is None or payer[1] != currency or payee[1] != currency:
            return None
        # Each stored balance after: the one before plus the posting (the first of an account in
        # the range implies its start), not negative unless a system account's.
        payer_kind, _, payer_key = payer
        before = ends.get(payer_key)
        if before is None:
            starts[payer_key] = payer_after + amount
        elif before - amount != payer_after:
            return None
        ends[payer_key] = payer_after
        payee_kind, _, payee_key = payee
        before = ends.get(payee_key)
        if before is None:
            starts[payee_key] = payee_after - amount
        elif before + amount != payee_after:
            return None
        ends[payee_key] = payee_after
        if (payer_after < 0 and payer_kind != "system") or (payee_after < 0 and payee_kind != "system"):
            return None
        if (written_out_hash(row) or _plain_transfer_hash(row)) != stored:
            return None
        digest = stored
        if payee_kind == "vendor" and at <= projector_position:
            payments.append(_payment(row))
        hashes.append(digest)
    return _Walked(position, digest, starts, ends, payments, hashes)
