"""The pure replay: fed entries in position order, it checks each and keeps balances, not entries.

It keeps only a balance per account (and a total per refunded payment, a state per hold, the
controls of each account an account entry changed), never the entries.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from ledger import controls, domain
from schemas import JournalEntry, Posting, Verification
from audit.report import Balances, EXAMPLES_IN_DETAIL_MAX, Findings
from audit.summary import Summary, VERIFIED_FIELDS, verified_values


@dataclass(frozen=True, slots=True)
class Start:
    """Where the replay begins: the empty journal, or a trusted state at `--from` position."""

    position: int = 0
    hash: str = domain.ZERO_HASH
    balances: Balances = field(default_factory=dict)
    refunded: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)  # original -> (amount, refunded)
    holds: dict[uuid.UUID, domain.HoldState] = field(default_factory=dict)  # placed at or before it, as there
    controls: dict[uuid.UUID, controls.Controls] = field(default_factory=dict)  # set by account entries up to it


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
        # Inside, accounts are keyed by their UUID's integer: hashed and compared in C, where a
        # UUID's own __hash__ and __eq__ are Python calls (nine per entry, a fifth of the replay).
        self._kinds: dict[int, tuple[str, str]] = {account_id.int: known for account_id, known in accounts.items()}
        self._ids: dict[int, uuid.UUID] = {account_id.int: account_id for account_id in accounts}
        self._balances: dict[int, int] = self._keyed(start.balances)
        self._projector_position = projector_position
        self._at_projector = self._keyed(balances_at_projector) if balances_at_projector is not None else None
        if balances_at_projector is None and projector_position == start.position:
            self._at_projector = dict(self._balances)
        self._signed = signed
        # original transfer id -> (its amount, refunded so far): bounded by the payments refunded
        self._refunded: dict[uuid.UUID, tuple[int, int]] = dict(start.refunded)
        # hold id -> the hold as replayed so far: bounded by the holds
        self._holds: dict[uuid.UUID, domain.HoldState] = dict(start.holds)
        self._hold_expiries = hold_expiries or {}
        # account -> the controls in force, for the accounts an account entry changed (the others
        # have their kind's defaults): bounded by the accounts
        self._controls: dict[int, controls.Controls] = {a.int: c for a, c in start.controls.items()}

    @property
    def account_count(self) -> int:
        return len(self._accounts)

    def _keyed(self, balances: Balances) -> dict[int, int]:
        self._ids.update((account_id.int, account_id) for account_id in balances)
        return {account_id.int: balance for account_id, balance in balances.items()}

    def _by_id(self, balances: dict[int, int]) -> Balances:
        return {self._ids[key]: balance for key, balance in balances.items()}

    def feed(
        self, entry: JournalEntry, balances_after: list[int] | None = None, original: Original | None = None,
        recomputed: str | None = None,
    ) -> None:
        """`balances_after`: the stored balance after the entry of each of its postings, in order;
        `original`: for a refund, the entry it names (None when there is none); `recomputed`: the
        hash the entry's content calls for, when the caller has computed it (`hash_mismatches`,
        in the audit's worker processes), else the replay computes it."""
        if self._at_projector is None and entry.position > self._projector_position:
            self._at_projector = dict(self._balances)
        # The checks below are called only when they can find something: the per-entry calls
        # are a measurable part of a replay of millions.
        if entry.position != self.position + 1:
            self._check_position(entry)
        if recomputed is None or recomputed != entry.hash or entry.prev_hash != self.hash:
            recomputed = self._check_hash(entry, recomputed)
        if entry.kind == "account" or entry.account_id is not None:
            self._check_account_entry(entry)
        else:
            hold = self._check_hold(entry) if entry.kind in HOLD_KINDS or entry.hold_id is not None else None
            self._check_postings(entry, hold)
        self._apply(entry)
        if balances_after is not None:
            self._check_balances_after(entry, balances_after)
        if entry.kind == "refund" or entry.refund_of is not None:
            self._check_refund(entry, original)
        if self._signed is not None:
            self._check_signed(entry.position, recomputed)
        self.position, self.hash = entry.position, entry.hash
        self.entries += 1

    def feed_summary(self, summary: Summary) -> bool:
        """Go past a range a worker found plain (`summarize`), as feeding its entries would; False,
        changing nothing, when the replay so far does not lead into it (a broken link between
        ranges, a balance before it that is not the replayed one) or it straddles the projector's
        checkpoint or the signed position: the range must then be fed entry by entry."""
        balances, signed = self._balances, self._signed
        if self._controls and not self._controls.keys().isdisjoint(summary.starts):
            return False  # a worker does not know the controls an account entry set: judged entry by entry
        if (summary.after != self.position or summary.prev_hash != self.hash
                or summary.after < self._projector_position < summary.upto
                or (signed is not None and summary.after < signed[0] < summary.upto)
                or any(balances.get(key, 0) != start for key, start in summary.starts.items())):
            return False
        if self._at_projector is None and summary.after >= self._projector_position:
            self._at_projector = dict(balances)
        balances.update(summary.ends)
        if signed is not None:
            self._check_signed(summary.upto, summary.hash)  # every hash in the range is the recomputed one
        self.position, self.hash = summary.upto, summary.hash
        self.entries += summary.upto - summary.after
        return True

    def verified_as_summarized(self, summary: Summary, rows: list[Verification]) -> bool:
        """Whether the verification rows at the summary's positions, read with their UUIDs as text,
        are exactly those its payments call for (what `check_verifications` would find nothing
        wrong with), in position order."""
        return verified_values(rows) == summary.payments

    def _check_position(self, entry: JournalEntry) -> None:
        expected = self.position + 1
        if entry.position > expected:
            last = entry.position - 1
            missing = f"position {expected}" if last == expected else f"positions {expected}..{last}"
            self.findings.record("contiguous", expected, f"{missing} missing")
        elif entry.position < expected:
            self.findings.record("contiguous", entry.position, f"position {entry.position} follows {self.position}")

    def _check_hash(self, entry: JournalEntry, recomputed: str | None) -> str:
        if entry.prev_hash != self.hash:
            self.findings.record(
                "chain", entry.position, f"prev_hash {entry.prev_hash} is not the previous entry's hash {self.hash}"
            )
        if recomputed is None:
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
        if hold is None and len(entry.postings) == 2:
            # The common case, judged without building the expected postings: exactly them.
            debit, credit = entry.postings
            if (debit.amount == -entry.amount and credit.amount == entry.amount
                    and debit.account_id.int == entry.from_account_id.int
                    and credit.account_id.int == entry.to_account_id.int):
                return
        total = sum(p.amount for p in entry.postings)
        expected = [Posting(entry.from_account_id, -entry.amount), Posting(entry.to_account_id, entry.amount)]
        if hold is not None:
            expected, _ = domain.hold_postings(entry.kind, hold, captured=entry.amount)
        if total != 0:
            self.findings.record("postings", entry.position, f"postings sum to {total}, not zero")
        elif entry.postings != expected:
            stored, wanted = _postings_text(entry.postings), _postings_text(expected)
            self.findings.record("postings", entry.position, f"postings {stored} are not {wanted}")

    def _check_account_entry(self, entry: JournalEntry) -> None:
        """An account entry moves no money, names an existing account as both parties, sets
        controls an account of its kind may have, and closes only an empty account; from it on,
        its controls are those in force (`_apply` judges each later posting by them)."""
        known = self._kinds.get(entry.from_account_id.int)
        why = None
        if entry.kind != "account" or entry.account_id is None or entry.account_status not in controls.STATUSES:
            why = f"is of kind {entry.kind} with account {entry.account_id} and status {entry.account_status}"
        elif entry.postings or entry.amount != 0 or not entry.account_id == entry.from_account_id == entry.to_account_id:
            why = "moves money, or names parties other than its account"
        elif known is None or known[1] != entry.currency:
            why = f"names account {entry.account_id}, which does not exist in {entry.currency}"
        elif (entry.min_balance is None and known[0] != "system") or (entry.min_balance or 0) > 0 or (
                entry.max_balance is not None and entry.max_balance < 0):
            why = f"sets limits a {known[0]} account may not have: {entry.min_balance}..{entry.max_balance}"
        elif entry.account_status == "closed" and self._controls_of(entry.account_id.int).status != "closed":
            why = self._why_not_closable(entry.account_id)
        if why is not None:
            self.findings.record("controls", entry.position, f"the account entry {entry.transfer_id} {why}")
            return
        in_force = controls.Controls(entry.account_status, entry.min_balance, entry.max_balance)
        self._controls[entry.account_id.int] = in_force

    def _why_not_closable(self, account_id: uuid.UUID) -> str | None:
        balance = self._balances.get(account_id.int, 0)
        pending = sum(1 for h in self._holds.values()
                      if h.status == "pending" and account_id in (h.from_account_id, h.to_account_id))
        return f"closes an account at balance {balance} with {pending} pending holds" if balance or pending else None

    def _controls_of(self, key: int) -> controls.Controls:
        found = self._controls.get(key)
        return found if found is not None else controls.defaults(self._kinds.get(key, ("wallet",))[0])

    def _apply(self, entry: JournalEntry) -> None:
        balances, kinds, controlled = self._balances, self._kinds, self._controls
        for posting in entry.postings:
            account_id = posting.account_id
            key = account_id.int
            balance = balances.get(key, 0) + posting.amount
            balances[key] = balance
            known = kinds.get(key)
            if known is None:
                self._ids.setdefault(key, account_id)
                self.findings.record("accounts", entry.position, f"account {account_id} does not exist")
                continue
            kind, currency = known
            if currency != entry.currency:
                detail = f"account {account_id} holds {currency}, the entry moves {entry.currency}"
                self.findings.record("accounts", entry.position, detail)
            if key in controlled:
                self._check_controls(entry, posting, controlled[key], balance)
            elif balance < 0 and kind != "system":
                self.findings.record("non_negative", entry.position, f"{kind} {account_id} at {balance}")

    def _check_controls(self, entry: JournalEntry, posting: Posting, in_force: controls.Controls, balance: int) -> None:
        """A posting judged by the controls an account entry set: money coming back (a refund, a
        release, a capture's rest to the wallet) passes any cap."""
        release = entry.kind in controls.RELEASE_KINDS or (
            entry.kind == "capture" and posting.account_id == entry.from_account_id)
        why = controls.posting_violation(in_force, before=balance - posting.amount, after=balance, release=release)
        if why is not None:
            self.findings.record("controls", entry.position, f"the {entry.kind} {entry.transfer_id} {why}"
                                 f" (account {posting.account_id}, {in_force.status})")

    def _check_balances_after(self, entry: JournalEntry, balances_after: list[int]) -> None:
        replayed = [self._balances[p.account_id.int] for p in entry.postings]
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
        elif original.kind not in ("transfer", "capture") or self._kinds.get(original.to_account_id.int, ("",))[0] != "vendor":
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
        kind = self._kinds.get(entry.to_account_id.int, ("unknown", ""))[0]
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
        account_controls: dict[uuid.UUID, controls.Controls] | None = None,
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
        self._compare("write_model", head[0], self._by_id(self._balances), write_model)
        self._check_projection(projected)
        self._check_conservation()
        if holds is not None:
            self._check_holding_accounts(head[0])
            self._compare_holds(head[0], holds)
        if account_controls is not None:
            differing = sorted(a for a, stored in account_controls.items() if self._controls_of(a.int) != stored)
            if differing:
                self.findings.record("controls", head[0], f"{len(differing)} accounts' controls differ from the"
                                     f" accounts table (first {differing[0]})")
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
            held = self._balances.get(domain.holding_account_id(currency).int, 0)
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
        self._compare("projection", self._projector_position, self._by_id(at_projector), projected)

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
        for key, balance in self._balances.items():
            currency = self._kinds.get(key, ("", "unknown"))[1]
            totals[currency] = totals.get(currency, 0) + balance
        for currency, total in sorted(totals.items()):
            if total != 0:
                self.findings.record("conservation", self.position, f"{currency} balances sum to {total}, not zero")


HOLD_KINDS = frozenset({"hold"}) | domain.HOLD_CLOSING_KINDS
_NEVER = dt.datetime.max.replace(tzinfo=dt.timezone.utc)


def _moment(committed_at: str) -> dt.datetime:
    return domain.parse_timestamp(committed_at)


def _verified_fields(entry: JournalEntry) -> dict[str, object]:
    """What a verification must say, field by field, to be the projection of `entry`."""
    return {name: getattr(entry, of) for name, of in VERIFIED_FIELDS.items()}


def _postings_text(postings: list[Posting]) -> str:
    return "[" + ", ".join(f"{p.account_id} {p.amount:+d}" for p in postings) + "]"


