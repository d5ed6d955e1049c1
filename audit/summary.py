"""A range of plain transfers checked from its rows alone, in a worker process, and its summary.

`summarize` checks the rows; a `Summary` is what the replay needs of the range to go past it
without its entries."""

from __future__ import annotations

import hashlib
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
_payment_values = attrgetter(*_HASHED_VERIFIED.values())
_verified_values = attrgetter(*_HASHED_VERIFIED)
_payments_encoder = msgspec.msgpack.Encoder()
_PLAIN_KIND = "transfer"  # the only kind `summarize` takes: no hold, no refund


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
    walk = _PlainWalk(after, accounts, projector_position, with_hashes)
    for row in rows:
        if not walk.take(entries.hashed_form(row), entries.stored_hash(row), entries.balances_after(row)):
            return None
    return walk.summary(upto)


@dataclass(slots=True)
class _PlainWalk:
    """The state of `summarize` through its range, entry by entry."""

    after: int
    accounts: AccountsByText
    projector_position: int
    with_hashes: bool
    position: int = -1
    first_prev: str | None = None
    digest: str | None = None
    starts: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    payments: list[tuple] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.position = self.after

    def take(self, entry: HashedEntry, digest: str, balances_after: list[int] | None) -> bool:
        """Whether the entry is plain and passes, its effects then taken in."""
        self.position += 1
        if (entry.position != self.position or entry.kind != _PLAIN_KIND or entry.refund_of is not None
                or entry.hold_id is not None or not self._chained(entry.prev_hash)):
            return False
        self.digest = digest
        postings = entry.postings
        if balances_after is None or len(postings) != 2 or len(balances_after) != 2:
            return False
        debit, credit = postings
        if (debit.account_id != entry.from_account_id or credit.account_id != entry.to_account_id
                or debit.amount != -entry.amount or credit.amount != entry.amount):
            return False
        payer, payee = self.accounts.get(debit.account_id), self.accounts.get(credit.account_id)
        if payer is None or payee is None or payer[1] != entry.currency or payee[1] != entry.currency:
            return False
        if not (self._moved(payer, -entry.amount, balances_after[0]) and self._moved(payee, entry.amount, balances_after[1])):
            return False
        if hashlib.sha256(entry.prev_hash.encode("ascii") + entries.encoded(entry)).hexdigest() != digest:
            return False
        if payee[0] == "vendor" and entry.position <= self.projector_position:
            self.payments.append((*_payment_values(entry), digest))
        if self.with_hashes:
            self.hashes.append(digest)
        return True

    def _chained(self, prev_hash: str) -> bool:
        """Each prev_hash is the previous entry's hash (hex, as it hashed to it); the first, ASCII at
        least, as the hash takes it (the replay judges whether it is the hash before the range)."""
        if self.digest is None:
            self.first_prev = prev_hash
            return prev_hash.isascii()
        return prev_hash == self.digest

    def _moved(self, account: tuple[str, str, int], amount: int, after_it: int) -> bool:
        """The stored balance after: the previous one plus the posting, not negative unless a
        system account's; the first one of an account in the range implies its start."""
        kind, _, key = account
        before = self.ends.get(key)
        if before is None:
            self.starts[key] = after_it - amount
        elif before + amount != after_it:
            return False
        self.ends[key] = after_it
        return after_it >= 0 or kind == "system"

    def summary(self, upto: int) -> Summary | None:
        if self.position != upto or self.digest is None:
            return None
        return Summary(self.after, upto, self.first_prev, self.digest, self.starts, self.ends,
                       _payments_encoder.encode(self.payments), self.hashes if self.with_hashes else None)

