"""The auditor: replay the journal inside one consistent snapshot and check every invariant.

`Replay` is the pure part: fed entries one by one in position order, it checks each and keeps
only a balance per account, so memory grows with accounts, not with entries. `run_audit` is the
I/O around it: it opens a read-only snapshot as the auditor role, streams the journal through a
server-side cursor, and hands the write model, the projection and the head row to
`Replay.finish` for the checks that compare states. `main` is `ledger audit`.

Every broken invariant is a finding under one of `CHECKS`, with the position it is located at;
the report's first failure is the lowest such position (ties in the order of `CHECKS`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import msgspec
import psycopg

from ledger import checkpoint as signing
from ledger import config, db, domain, merkle, store, tree_store
from projector import store as projections
from schemas import JournalEntry, Posting, Verification

# The closed set of checks, in the order a tie at one position is reported.
CHECKS: tuple[str, ...] = (
    "contiguous",  # positions run 1, 2, 3 ... with no gap and no duplicate
    "chain",  # each prev_hash is the previous entry's hash (64 zeros before position 1)
    "hash",  # the hash recomputed from the entry's canonical bytes is the stored one
    "postings",  # postings sum to zero and are exactly (from, -amount), (to, +amount); a hold's step, those of its kind
    "accounts",  # every posting's account exists and holds the entry's currency
    "non_negative",  # no wallet or vendor account below zero after any entry
    "balance_after",  # every posting's stored balance_after is the replayed balance after its entry
    "refunds",  # a refund returns an earlier payment (transfer or capture) to a vendor, never more than it in total
    "holds",  # each hold placed once, closed at most once, captured <= held, closed before its expiry unless by expiry; holding accounts hold exactly the pending holds; the holds table agrees
    "checkpoint",  # the signature holds and the journal still hashes to the signed hash
    "orphan_postings",  # no postings without their journal entry
    "head",  # the journal_head row names the last entry
    "write_model",  # recomputed balances equal the `balances` table
    "projection",  # recomputed balances at the projector's checkpoint equal `projected_balances`
    "verifications",  # one verification per vendor payment up to the projector's checkpoint, equal to its entry
    "conservation",  # per currency, all balances sum to zero
    "tree",  # the stored Merkle subtrees are those recomputed from the replayed entry hashes
    "tree_heads",  # every signed tree head: its root and hash recomputed, its signature by the pinned key
)

PROGRESS_EVERY_ENTRIES = 10_000
EXAMPLES_IN_DETAIL_MAX = 3  # accounts named in a balance mismatch's detail, at most
PROGRESS_BAR_CHARS = 40
EXIT_CLEAN = 0
EXIT_FAILED = 1
EXIT_UNABLE = 2

Balances = dict[uuid.UUID, int]
Progress = Callable[[int, int], None]  # (position reached, head position)


class Failure(msgspec.Struct, frozen=True):
    position: int
    check: str
    detail: str


class CheckResult(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    failures: int
    first: Failure | None


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    from_position: int
    last_position: int  # the last entry replayed
    head_position: int  # what the journal_head row says
    entries: int  # entries replayed in this run
    accounts: int
    projector_position: int
    checkpoint_position: int | None
    seconds: float
    entries_per_s: float
    checks: list[CheckResult]
    first_failure: Failure | None
    tree_size: int = 0  # leaves of the stored Merkle tree checked (0 when the replay starts --from)
    tree_heads: int = 0  # signed tree heads checked
    tree_head_signatures: str = "none"  # "verified" against the pinned key, or "unverified" without one


class Findings:
    """A count and the first failure of each check: bounded, however broken the journal is."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(CHECKS, 0)
        self._first: dict[str, Failure] = {}

    def record(self, check: str, position: int, detail: str) -> None:
        assert check in self._counts, f"unknown check {check}"
        self._counts[check] += 1
        self._first.setdefault(check, Failure(position, check, detail))

    def results(self) -> list[CheckResult]:
        return [
            CheckResult(name, self._counts[name] == 0, self._counts[name], self._first.get(name)) for name in CHECKS
        ]

    def first_failure(self) -> Failure | None:
        if not self._first:
            return None
        return min(self._first.values(), key=lambda f: (f.position, CHECKS.index(f.check)))


@dataclass(frozen=True, slots=True)
class Start:
    """Where the replay begins: the empty journal, or a trusted state at `--from` position."""

    position: int = 0
    hash: str = domain.ZERO_HASH
    balances: Balances = field(default_factory=dict)
    refunded: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)  # original -> (amount, refunded)
    holds: dict[uuid.UUID, domain.HoldState] = field(default_factory=dict)  # placed at or before it, as there


@dataclass(frozen=True, slots=True)
class Original:
    """What the journal holds about the entry a refund names (`store.refund_originals`)."""

    position: int
    kind: str
    from_account_id: uuid.UUID
    to_account_id: uuid.UUID
    amount: int


class Replay:
    """The checks, fed one entry at a time in position order; no I/O. Memory: a balance per
    account, and a refunded total per payment that has refunds."""

    def __init__(
        self,
        accounts: dict[uuid.UUID, tuple[str, str]],
        *,
        start: Start = Start(),
        projector_position: int = 0,
        balances_at_projector: Balances | None = None,
        signed: tuple[int, str] | None = None,
        hold_expiries: dict[uuid.UUID, dt.datetime] | None = None,
    ) -> None:
        """`accounts` maps id to (kind, currency). When the projector's checkpoint lies before
        the start, the replay never passes it: the caller gives the balances there.
        `hold_expiries`: each hold's `expires_at` (the journal does not carry it), from `holds`."""
        assert projector_position >= start.position or balances_at_projector is not None
        self.findings = Findings()
        self.position = start.position
        self.hash = start.hash
        self.entries = 0
        self._accounts = accounts
        self._balances: Balances = dict(start.balances)
        self._projector_position = projector_position
        self._at_projector = balances_at_projector
        if balances_at_projector is None and projector_position == start.position:
            self._at_projector = dict(start.balances)
        self._signed = signed
        # original transfer id -> (its amount, refunded so far): bounded by the payments refunded
        self._refunded: dict[uuid.UUID, tuple[int, int]] = dict(start.refunded)
        # hold id -> the hold as replayed so far: bounded by the holds
        self._holds: dict[uuid.UUID, domain.HoldState] = dict(start.holds)
        self._hold_expiries = hold_expiries or {}

    @property
    def account_count(self) -> int:
        return len(self._accounts)

    def feed(
        self, entry: JournalEntry, balances_after: list[int] | None = None, original: Original | None = None
    ) -> None:
        """`balances_after`: the stored balance after the entry of each of its postings, in order;
        `original`: for a refund, the entry it names (None when there is none)."""
        if self._at_projector is None and entry.position > self._projector_position:
            self._at_projector = dict(self._balances)
        self._check_position(entry)
        recomputed = self._check_hash(entry)
        hold = self._check_hold(entry) if entry.kind in HOLD_KINDS or entry.hold_id is not None else None
        self._check_postings(entry, hold)
        self._apply(entry)
        if balances_after is not None:
            self._check_balances_after(entry, balances_after)
        if entry.kind == "refund" or entry.refund_of is not None:
            self._check_refund(entry, original)
        self._check_signed(entry.position, recomputed)
        self.position, self.hash = entry.position, entry.hash
        self.entries += 1

    def _check_position(self, entry: JournalEntry) -> None:
        expected = self.position + 1
        if entry.position > expected:
            last = entry.position - 1
            missing = f"position {expected}" if last == expected else f"positions {expected}..{last}"
            self.findings.record("contiguous", expected, f"{missing} missing")
        elif entry.position < expected:
            self.findings.record("contiguous", entry.position, f"position {entry.position} follows {self.position}")

    def _check_hash(self, entry: JournalEntry) -> str:
        if entry.prev_hash != self.hash:
            self.findings.record(
                "chain", entry.position, f"prev_hash {entry.prev_hash} is not the previous entry's hash {self.hash}"
            )
        recomputed = domain.recompute_hash(entry)
        if recomputed != entry.hash:
            self.findings.record("hash", entry.position, f"stored hash {entry.hash}, recomputed {recomputed}")
        return recomputed

    def _check_hold(self, entry: JournalEntry) -> domain.HoldState | None:
        """Judge a hold's step against the hold as replayed so far and apply it; returns the hold
        as it was before the step (what its postings are judged by), or None when there is none."""
        if entry.kind not in HOLD_KINDS or entry.hold_id is None:
            self.findings.record("holds", entry.position, f"kind {entry.kind} with hold_id {entry.hold_id}")
            return None
        known = self._holds.get(entry.hold_id)
        if entry.kind == "hold":
            if known is not None:
                self.findings.record("holds", entry.position, f"the hold {entry.hold_id} is placed twice")
                return None
            placed = domain.HoldState(
                id=entry.hold_id, from_account_id=entry.from_account_id, to_account_id=entry.to_account_id,
                amount=entry.amount, currency=entry.currency, reference=entry.reference, metadata=entry.metadata,
                status="pending", captured_amount=0, expires_at=self._hold_expiries.get(entry.hold_id, _NEVER),
                position=entry.position,
            )
            self._holds[entry.hold_id] = placed
            return placed
        why = None
        if known is None:
            why = "names no earlier hold"
        elif known.status != "pending":
            why = f"closes it a second time (it was {known.status} at {known.closed_position})"
        elif (entry.from_account_id, entry.to_account_id, entry.currency) != (
            known.from_account_id, known.to_account_id, known.currency
        ):
            why = "does not carry the hold's parties and currency"
        elif entry.kind == "capture" and entry.amount > known.amount:
            why = f"captures {entry.amount}, more than the {known.amount} held"
        elif entry.kind != "expire" and _moment(entry.committed_at) >= known.expires_at:
            why = f"closes it by {entry.kind} at or after its expiry"
        elif entry.kind == "expire" and _moment(entry.committed_at) < known.expires_at:
            why = "expires it before its expiry"
        if why is not None:
            self.findings.record("holds", entry.position, f"the {entry.kind} of hold {entry.hold_id} {why}")
            return known if known is not None and known.status == "pending" else None
        self._holds[entry.hold_id] = domain.after_step(known, entry)
        return known

    def _check_postings(self, entry: JournalEntry, hold: domain.HoldState | None = None) -> None:
        total = sum(p.amount for p in entry.postings)
        expected = [Posting(entry.from_account_id, -entry.amount), Posting(entry.to_account_id, entry.amount)]
        if hold is not None:
            expected, _ = domain.hold_postings(entry.kind, hold, captured=entry.amount)
        if total != 0:
            self.findings.record("postings", entry.position, f"postings sum to {total}, not zero")
        elif entry.postings != expected:
            stored, wanted = _postings_text(entry.postings), _postings_text(expected)
            self.findings.record("postings", entry.position, f"postings {stored} are not {wanted}")

    def _apply(self, entry: JournalEntry) -> None:
        for posting in entry.postings:
            account_id = posting.account_id
            balance = self._balances.get(account_id, 0) + posting.amount
            self._balances[account_id] = balance
            known = self._accounts.get(account_id)
            if known is None:
                self.findings.record("accounts", entry.position, f"account {account_id} does not exist")
                continue
            kind, currency = known
            if currency != entry.currency:
                detail = f"account {account_id} holds {currency}, the entry moves {entry.currency}"
                self.findings.record("accounts", entry.position, detail)
            if balance < 0 and kind != "system":
                self.findings.record("non_negative", entry.position, f"{kind} {account_id} at {balance}")

    def _check_balances_after(self, entry: JournalEntry, balances_after: list[int]) -> None:
        replayed = [self._balances[p.account_id] for p in entry.postings]
        if balances_after != replayed:
            self.findings.record("balance_after", entry.position,
                                 f"stored balances after {balances_after}, replayed {replayed}")

    def _check_refund(self, entry: JournalEntry, original: Original | None) -> None:
        if entry.kind != "refund" or entry.refund_of is None:
            self.findings.record("refunds", entry.position, f"kind {entry.kind} with refund_of {entry.refund_of}")
            return
        why = None
        if original is None or original.position >= entry.position:
            why = "names no earlier entry"
        elif original.kind not in ("transfer", "capture") or self._accounts.get(original.to_account_id, ("",))[0] != "vendor":
            why = f"names a {original.kind} that was not a payment to a vendor account"
        elif (entry.from_account_id, entry.to_account_id) != (original.to_account_id, original.from_account_id):
            why = "does not return the payment from the vendor to its payer"
        if why is not None:
            self.findings.record("refunds", entry.position, f"the refund of {entry.refund_of} {why}")
            return
        total = self._refunded.get(entry.refund_of, (original.amount, 0))[1] + entry.amount
        self._refunded[entry.refund_of] = (original.amount, total)
        if total > original.amount:
            self.findings.record("refunds", entry.position,
                                 f"refunds of {entry.refund_of} add up to {total}, more than its {original.amount}")

    def check_verifications(self, entry: JournalEntry, rows: list[Verification]) -> None:
        """The verification rows at `entry`'s position against the entry: a payment to a vendor
        account up to the projector's checkpoint has exactly one, equal to it; nothing else has any."""
        kind = self._accounts.get(entry.to_account_id, ("unknown", ""))[0]
        if entry.kind not in domain.PAYMENT_KINDS:
            kind = f"{entry.kind} entry"  # names the vendor, pays it nothing
        expected = kind == "vendor" and entry.position <= self._projector_position
        if not expected:
            for row in rows:
                why = "is not a payment to a vendor account" if kind != "vendor" else "is past the projector's checkpoint"
                self.findings.record("verifications", entry.position,
                                     f"a verification of {row.transfer_id} exists, but the entry {why}")
            return
        if not rows:
            self.findings.record("verifications", entry.position, f"the payment {entry.transfer_id} has no verification")
            return
        if len(rows) > 1:
            self.findings.record("verifications", entry.position, f"{len(rows)} verifications at one position")
        for row in rows:
            differing = [name for name, value in _verified_fields(entry).items() if getattr(row, name) != value]
            if differing:
                self.findings.record("verifications", entry.position,
                                     f"the verification of {row.transfer_id} differs from its entry in {', '.join(differing)}")

    def stray_verification(self, row: Verification) -> None:
        """A verification at a position the replay has no entry for."""
        self.findings.record("verifications", row.position,
                             f"the verification of {row.transfer_id} names position {row.position}, which has no entry")

    def _check_signed(self, position: int, recomputed: str) -> None:
        if self._signed is None or position < self._signed[0]:
            return
        signed_position, signed_hash = self._signed
        self._signed = None  # judged once: at its position, or where the replay passed it
        if position > signed_position:
            self.findings.record("checkpoint", signed_position, f"the signed position {signed_position} is missing")
        elif recomputed != signed_hash:
            self.findings.record(
                "checkpoint",
                signed_position,
                f"the journal up to {signed_position} hashes to {recomputed}, the checkpoint signed {signed_hash}:"
                f" history at or before {signed_position} was rewritten",
            )

    def finish(
        self, *, head: tuple[int, str], write_model: Balances, projected: Balances, orphan_position: int | None,
        refund_totals: dict[uuid.UUID, int] | None = None,
        holds: list[domain.HoldState] | None = None,
    ) -> None:
        """The checks that compare the replayed state with what the database holds."""
        if self._signed is not None:
            self.findings.record(
                "checkpoint", self._signed[0], f"the journal ends at {self.position}, before the signed position"
            )
        if orphan_position is not None:
            self.findings.record("orphan_postings", orphan_position, "postings without a journal entry")
        if head != (self.position, self.hash):
            self.findings.record(
                "head", max(head[0], self.position),
                f"journal_head says {head[0]} {head[1]}, the last entry is {self.position} {self.hash}",
            )
        # The balances table is exact at the head row's position, so that is where it is judged.
        self._compare("write_model", head[0], self._balances, write_model)
        self._check_projection(projected)
        self._check_conservation()
        if holds is not None:
            self._check_holding_accounts(head[0])
            self._compare_holds(head[0], holds)
        if refund_totals is not None:
            replayed = {original: total for original, (_, total) in self._refunded.items()}
            differing = sorted(t for t in replayed.keys() | refund_totals.keys()
                               if replayed.get(t, 0) != refund_totals.get(t, 0))
            if differing:
                self.findings.record("refunds", head[0], f"{len(differing)} refund totals differ from refund_totals"
                                     f" (first {differing[0]})")

    def _check_holding_accounts(self, position: int) -> None:
        """Per currency, the holding account holds exactly the pending holds' money."""
        pending: dict[str, int] = {}
        for hold in self._holds.values():
            if hold.status == "pending":
                pending[hold.currency] = pending.get(hold.currency, 0) + hold.amount
        currencies = pending.keys() | {c for a, (_, c) in self._accounts.items() if a == domain.holding_account_id(c)}
        for currency in sorted(currencies):
            held = self._balances.get(domain.holding_account_id(currency), 0)
            if held != pending.get(currency, 0):
                self.findings.record("holds", position, f"the {currency} holding account holds {held},"
                                     f" the pending holds {pending.get(currency, 0)}")

    def _compare_holds(self, position: int, stored: list[domain.HoldState]) -> None:
        """The holds table says what the journal says of every hold the replay saw."""
        def state(hold: domain.HoldState) -> tuple:
            return (hold.status, hold.captured_amount, hold.closed_position, hold.transfer_id, hold.amount)

        rows = {hold.id: hold for hold in stored}
        differing = sorted(h for h in self._holds if h not in rows or state(rows[h]) != state(self._holds[h]))
        differing += sorted(h for h, row in rows.items() if h not in self._holds and row.position <= self.position)
        if differing:
            self.findings.record("holds", position, f"{len(differing)} holds differ from the holds table"
                                 f" (first {differing[0]})")

    def _check_projection(self, projected: Balances) -> None:
        if self._at_projector is None and self._projector_position > self.position:
            detail = f"the projector's checkpoint is beyond the last entry {self.position}"
            self.findings.record("projection", self._projector_position, detail)
            return
        at_projector = self._at_projector if self._at_projector is not None else self._balances
        self._compare("projection", self._projector_position, at_projector, projected)

    def _compare(self, check: str, position: int, replayed: Balances, stored: Balances) -> None:
        differing = sorted(a for a in replayed.keys() | stored.keys() if replayed.get(a, 0) != stored.get(a, 0))
        if differing:
            examples = ", ".join(
                f"{a}: replayed {replayed.get(a, 0)}, stored {stored.get(a, 0)}"
                for a in differing[:EXAMPLES_IN_DETAIL_MAX]
            )
            self.findings.record(check, position, f"{len(differing)} accounts differ ({examples})")

    def _check_conservation(self) -> None:
        totals: dict[str, int] = {}
        for account_id, balance in self._balances.items():
            currency = self._accounts.get(account_id, ("", "unknown"))[1]
            totals[currency] = totals.get(currency, 0) + balance
        for currency, total in sorted(totals.items()):
            if total != 0:
                self.findings.record("conservation", self.position, f"{currency} balances sum to {total}, not zero")


HOLD_KINDS = frozenset({"hold"}) | domain.HOLD_CLOSING_KINDS
_NEVER = dt.datetime.max.replace(tzinfo=dt.timezone.utc)


def _moment(committed_at: str) -> dt.datetime:
    return dt.datetime.fromisoformat(committed_at.replace("Z", "+00:00"))


def _verified_fields(entry: JournalEntry) -> dict[str, object]:
    """What a verification must say, field by field, to be the projection of `entry`."""
    return {
        "transfer_id": entry.transfer_id, "vendor_account_id": entry.to_account_id,
        "payer_account_id": entry.from_account_id, "amount": entry.amount, "currency": entry.currency,
        "reference": entry.reference, "committed_at": entry.committed_at, "position": entry.position,
        "hash": entry.hash,
    }


def _postings_text(postings: list[Posting]) -> str:
    return "[" + ", ".join(f"{p.account_id} {p.amount:+d}" for p in postings) + "]"


class TreeCheck:
    """The Merkle tree recomputed from the replayed entry hashes with a frontier (a stack of
    complete subtree roots: O(log n) memory), compared with the stored subtrees as each completes,
    and with every signed tree head at its size. The heads' roots all come from one sequence of
    leaves, so two heads that both match are consistent with each other by construction."""

    def __init__(self, findings: Findings, *, stored_size: int, heads: list, public_key: str | None) -> None:
        self._findings = findings
        self._frontier = merkle.Frontier()
        self.stored_size = stored_size
        self._heads = list(heads)
        self._public_key = public_key
        self.heads_checked = 0

    def feed(self, position: int, entry_hash: str, stored: dict[merkle.Key, bytes]) -> None:
        completed = self._frontier.append(merkle.entry_leaf(entry_hash))
        if position <= self.stored_size:
            for key, digest in completed:
                found = stored.pop(key, None)
                if found != digest:
                    what = "is missing" if found is None else f"is {found.hex()}, recomputed {digest.hex()}"
                    self._findings.record("tree", position, f"the stored subtree {key} (level, index) {what}")
        for key in stored:
            self._findings.record("tree", position, f"the stored subtree {key} completes no subtree of the tree")
        while self._heads and self._heads[0].tree_size <= position:
            self._check_head(self._heads.pop(0), position, entry_hash)

    def _check_head(self, head, position: int, entry_hash: str) -> None:
        self.heads_checked += 1
        root = self._frontier.root().hex()
        if head.tree_size != position:
            self._findings.record("tree_heads", head.tree_size, f"the signed tree size {head.tree_size} is missing")
        elif (head.root_hash, head.hash) != (root, entry_hash):
            self._findings.record(
                "tree_heads", position,
                f"the tree head signed at {head.signed_at} says root {head.root_hash} and hash {head.hash}; the journal"
                f" gives {root} and {entry_hash}: history at or before {position} was rewritten",
            )
        if self._public_key is not None and not signing.verify_tree_head(
            tree_size=head.tree_size, root_hash=head.root_hash, digest=head.hash, signed_at=head.signed_at,
            signature=head.signature, trusted_public_key=self._public_key,
        ):
            self._findings.record("tree_heads", head.tree_size, "the tree head is not signed by the pinned key")

    def finish(self, last_position: int, nodes_beyond: int | None) -> None:
        if self.stored_size > last_position:
            self._findings.record("tree", last_position + 1, f"the stored tree has {self.stored_size} leaves,"
                                  f" the journal ends at {last_position}")
        if nodes_beyond is not None:
            self._findings.record("tree", nodes_beyond, "a stored subtree lies past the stored tree size")
        for head in self._heads:
            self.heads_checked += 1
            self._findings.record("tree_heads", head.tree_size, f"the journal ends at {last_position},"
                                  f" before the signed tree size {head.tree_size}")
        self._heads = []

    @property
    def signatures(self) -> str:
        if not self.heads_checked:
            return "none"
        return "verified" if self._public_key is not None else "unverified"


# ---- the I/O: one snapshot, one cursor ------------------------------------------------------


async def run_audit(
    database_url: str,
    *,
    from_position: int = 0,
    checkpoint: signing.SignedCheckpoint | None = None,
    public_key: str | None = None,
    projector_name: str = projections.DEFAULT_NAME,
    progress: Progress | None = None,
) -> AuditReport:
    """Replay the journal after `from_position` (trusting the state there) and check it all. A
    `checkpoint` counts only when signed by `public_key`, the key the auditor pinned."""
    assert from_position >= 0, "from_position must not be negative"
    dialect = await db.detect_dialect(database_url)
    started = time.monotonic()
    async with await dialect.connection_class.connect(
        database_url, autocommit=True, connect_timeout=db.CONNECT_TIMEOUT_S
    ) as conn:
        # Read-only: nothing to commit, and closing the connection ends the snapshot.
        await store.begin_snapshot(conn, dialect.snapshot_begin())
        replay, head_position, projector_position, tree_check = await _replay(
            conn, from_position=from_position, checkpoint=checkpoint, public_key=public_key,
            projector_name=projector_name, progress=progress,
        )
    seconds = time.monotonic() - started
    return AuditReport(
        ok=replay.findings.first_failure() is None,
        from_position=from_position,
        last_position=replay.position,
        head_position=head_position,
        entries=replay.entries,
        accounts=replay.account_count,
        projector_position=projector_position,
        checkpoint_position=checkpoint.position if checkpoint else None,
        seconds=round(seconds, 3),
        entries_per_s=round(replay.entries / seconds, 1) if seconds > 0 else 0.0,
        checks=replay.findings.results(),
        first_failure=replay.findings.first_failure(),
        tree_size=tree_check.stored_size if tree_check else 0,
        tree_heads=tree_check.heads_checked if tree_check else 0,
        tree_head_signatures=tree_check.signatures if tree_check else "none",
    )


async def _replay(
    conn: psycopg.AsyncConnection,
    *,
    from_position: int,
    checkpoint: signing.SignedCheckpoint | None,
    public_key: str | None,
    projector_name: str,
    progress: Progress | None,
) -> tuple[Replay, int, int, TreeCheck | None]:
    accounts = await store.account_kinds(conn)
    head = await store.journal_head(conn)
    head_position, head_hash = head.position, head.hash
    projector_position = await projections.checkpoint(conn, projector_name)
    start, start_missing = await _start(conn, from_position)
    at_projector = None
    if projector_position < from_position:
        at_projector = await store.balances_from_postings(conn, projector_position)
    unusable = _unusable_checkpoint(checkpoint, from_position, public_key) if checkpoint else None
    hold_rows = await store.holds_for_audit(conn)
    replay = Replay(
        accounts, start=_with_holds(start, hold_rows), projector_position=projector_position,
        balances_at_projector=at_projector,
        signed=(checkpoint.position, checkpoint.hash) if checkpoint and not unusable else None,
        hold_expiries={hold.id: hold.expires_at for hold in hold_rows},
    )
    if start_missing:
        replay.findings.record("contiguous", from_position, f"there is no entry at --from position {from_position}")
    if checkpoint and unusable:
        replay.findings.record("checkpoint", checkpoint.position, unusable)
    # The verifications are walked alongside the journal, both in position order, so memory
    # stays bounded by a page of each however long the journal is.
    verifications = aiter(projections.stream_verifications(conn, from_position))
    pending = await anext(verifications, None)
    # The tree is recomputed from the first leaf, so only a replay from the start checks it.
    tree_check, stored_size = None, await tree_store.tree_size(conn)
    if from_position == 0:
        tree_check = TreeCheck(replay.findings, stored_size=stored_size, heads=await tree_store.tree_heads(conn),
                               public_key=public_key)
    nodes = aiter(tree_store.stream_nodes(conn, after=from_position, upto=stored_size if tree_check else 0))
    node = await anext(nodes, None)
    # The originals of the refunds, walked alongside too (in the refunds' position order).
    originals = aiter(store.refund_originals(conn, from_position))
    next_original = await anext(originals, None)
    async for entry, balances_after in store.stream_entries(conn, from_position):
        original = None
        if next_original is not None and next_original[0] == entry.position:
            original = Original(*next_original[1:]) if next_original[1] is not None else None
            next_original = await anext(originals, None)
        replay.feed(entry, balances_after, original)
        if tree_check is not None:
            stored = {}
            while node is not None and node[0] <= entry.position:
                stored[node[1]] = node[2]
                node = await anext(nodes, None)
            tree_check.feed(entry.position, entry.hash, stored)
        rows = []
        while pending is not None and pending.position <= entry.position:
            if pending.position < entry.position:
                replay.stray_verification(pending)
            else:
                rows.append(pending)
            pending = await anext(verifications, None)
        replay.check_verifications(entry, rows)
        if progress is not None and entry.position % PROGRESS_EVERY_ENTRIES == 0:
            progress(entry.position, head_position)
    while pending is not None:
        replay.stray_verification(pending)
        pending = await anext(verifications, None)
    if progress is not None:
        progress(replay.position, head_position)
    if tree_check is not None:
        tree_check.finish(replay.position, await tree_store.nodes_beyond(conn, stored_size))
    replay.finish(
        head=(head_position, head_hash),
        write_model=await store.write_model_balances(conn),
        projected=await projections.balances(conn),
        orphan_position=await store.first_orphan_posting(conn, from_position),
        refund_totals=await store.refund_totals(conn),
        holds=hold_rows,
    )
    return replay, head_position, projector_position, tree_check


def _with_holds(start: Start, rows: list[domain.HoldState]) -> Start:
    """The trusted holds at `--from`: those placed at or before it, as they were there."""
    if start.position == 0:
        return start
    holds = {}
    for row in rows:
        if row.position <= start.position:
            open_there = row.closed_position is None or row.closed_position > start.position
            holds[row.id] = dataclasses.replace(
                row, status="pending", captured_amount=0, closed_position=None, transfer_id=None
            ) if open_there else row
    return dataclasses.replace(start, holds=holds)


async def _start(conn: psycopg.AsyncConnection, from_position: int) -> tuple[Start, bool]:
    """The trusted state at `--from`: its stored hash and the balances its postings imply.
    Returns whether the entry at that position is missing."""
    if from_position == 0:
        return Start(), False
    digest = await store.stored_hash(conn, from_position)
    balances = await store.balances_from_postings(conn, from_position)
    refunded = await store.refunded_up_to(conn, from_position)
    return Start(from_position, digest or domain.ZERO_HASH, balances, refunded), digest is None


def _unusable_checkpoint(
    checkpoint: signing.SignedCheckpoint, from_position: int, public_key: str | None
) -> str | None:
    """Why the replay cannot prove this checkpoint, or None when it can."""
    if public_key is None:
        return "no public key is pinned, so the signature proves nothing (pass --public-key)"
    if checkpoint.public_key != public_key:
        return f"signed by key {checkpoint.public_key}, not by the pinned key {public_key}"
    if not signing.verify(checkpoint, public_key):
        return "the signature does not verify"
    if checkpoint.position <= from_position:
        return f"the checkpoint is not after --from {from_position}, so the replay cannot prove it"
    return None


# ---- `ledger audit` -------------------------------------------------------------------------


def main(
    settings: config.Settings, *, as_json: bool, from_position: int, checkpoint: str | None, public_key: str | None
) -> int:
    """0 when every check holds, 1 when one fails, 2 when the audit could not run; an unreachable
    database is raised to the command line, which exits 3."""
    if checkpoint and not public_key:
        print("ledger audit: --checkpoint needs --public-key (or LEDGER_AUDIT_PUBLIC_KEY): a checkpoint is"
              " proof only when signed by a key you pinned", file=sys.stderr)
        return EXIT_UNABLE
    try:
        signed = signing.read_file(Path(checkpoint)) if checkpoint else None
        pinned = signing.read_public_key(public_key) if public_key else None
    except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as error:
        print(f"ledger audit: cannot read the checkpoint or the public key: {error}", file=sys.stderr)
        return EXIT_UNABLE
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        report = asyncio.run(run_audit(settings.database_url, from_position=from_position, checkpoint=signed,
                                       public_key=pinned, projector_name=settings.projector_name, progress=bar))
    except psycopg.OperationalError:
        raise  # the command line reports an unreachable database: one line, exit 3
    except psycopg.Error as error:
        print(f"ledger audit: cannot read the journal: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_UNABLE
    finally:
        if bar is not None:
            bar.close()
    sys.stdout.write(msgspec.json.encode(report).decode() + "\n" if as_json else render(report))
    return EXIT_CLEAN if report.ok else EXIT_FAILED


def render(report: AuditReport) -> str:
    """The human report: the verdict, a table of checks, then the counts and the speed."""
    first = report.first_failure
    if first is None:
        verdict = "ok: every check holds"
    else:
        verdict = f"FAIL: first bad position {first.position}, check {first.check}: {first.detail}"
    lines = [f"ledger audit {verdict}", "", f"{'check':<16} {'result':<6} {'failures':>8}  first at"]
    for check in report.checks:
        where = str(check.first.position) if check.first else ""
        lines.append(f"{check.name:<16} {'ok' if check.ok else 'FAIL':<6} {check.failures:>8}  {where}")
    lines += [
        "",
        f"entries {report.entries:,} (positions {report.from_position + 1}..{report.last_position}),"
        f" accounts {report.accounts:,}, {report.seconds:.2f} s, {report.entries_per_s:,.0f} entries/s",
        f"merkle tree {report.tree_size:,} leaves checked, {report.tree_heads:,} signed tree heads"
        f" (signatures {report.tree_head_signatures})",
    ]
    return "\n".join(lines) + "\n"


class ProgressBar:
    """A one-line bar on a terminal's stderr, redrawn in place."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._drawn = False

    def __call__(self, position: int, head: int) -> None:
        share = min(position / head, 1.0) if head else 1.0
        filled = int(share * PROGRESS_BAR_CHARS)
        bar = "#" * filled + "." * (PROGRESS_BAR_CHARS - filled)
        self._out.write(f"\r[{bar}] {share:4.0%} {position:,}/{head:,}")
        self._out.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._out.write("\n")
            self._out.flush()
