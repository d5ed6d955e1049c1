"""The pure core: what a transfer does to the ledger, decided with no I/O.

The committer reads the state a batch needs, hands it here, and writes back what comes out, so
the decision is the same function in a live write, a replay and a unit test. Rejections are
values with names that say what is wrong, ordered by precedence (the contract's order of checks).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from dataclasses import dataclass, field

import msgspec

from ledger import controls
# The canonical form has its own module; its names stay reachable here, where callers know them.
from ledger.canonical import UNHASHED_FIELDS, _omitted_at_default, canonical_bytes, canonical_json  # noqa: F401
from ledger.canonical import entry_hash, recompute_hash  # noqa: F401
from schemas import JournalEntry, Posting

ZERO_HASH = "0" * 64
# Balances are INT8 in the database; a transfer that would carry one past it is refused, never
# left to fail the whole batch in the database.
BALANCE_MAX = 2**63 - 1


class Rejection(enum.Enum):
    """Expected refusals of a transfer. The value is the stable `code` clients see."""

    idempotency_key_reused = "idempotency_key_reused"
    forbidden = "forbidden"
    same_account = "same_account"
    account_not_found = "account_not_found"
    currency_mismatch = "currency_mismatch"
    account_closed = "account_closed"
    account_frozen = "account_frozen"
    account_not_empty = "account_not_empty"
    refund_exceeds_transfer = "refund_exceeds_transfer"
    hold_not_pending = "hold_not_pending"
    hold_expired = "hold_expired"
    capture_exceeds_hold = "capture_exceeds_hold"
    insufficient_funds = "insufficient_funds"
    balance_limit_exceeded = "balance_limit_exceeded"


# Rejections only a refund can get (a transfer's route does not document them).
REFUND_ONLY = frozenset({Rejection.refund_exceeds_transfer})
# Rejections only a step of a hold (capture, void, expire) can get.
HOLD_ONLY = frozenset({Rejection.hold_not_pending, Rejection.hold_expired, Rejection.capture_exceeds_hold})
# Rejections only a control change can get.
CONTROL_ONLY = frozenset({Rejection.account_not_empty})

# The steps of a hold after it is placed: each closes it, so each needs it pending.
HOLD_CLOSING_KINDS = frozenset({"capture", "void", "expire"})
# Entries that pay their `to_account_id` (what a vendor verifies); a hold, a void and an expiry
# name the vendor as the hold's other party but pay it nothing.
PAYMENT_KINDS = frozenset({"transfer", "refund", "capture"})
# The status a closing step leaves its hold in.
CLOSED_STATUS = {"capture": "captured", "void": "voided", "expire": "expired"}

# Held money sits in one system account per currency, whose id every process (and the auditor)
# derives from the currency alone: nothing to look up, nothing to configure.
_HOLDING_NAMESPACE = uuid.UUID("5f1c3a52-8f0e-4d7a-9a51-6c1d2b7e9a10")


def holding_account_id(currency: str) -> uuid.UUID:
    return uuid.uuid5(_HOLDING_NAMESPACE, "holding:" + currency)


def is_holding_account(account: "AccountState") -> bool:
    """Money moves in and out of a holding account only through holds: a transfer by hand (an
    admin's, from or to it) would leave it holding more or less than its pending holds, and every
    later step of those holds would fail (issue 24 #10)."""
    return account.id == holding_account_id(account.currency)


@dataclass(frozen=True, slots=True)
class AccountState:
    id: uuid.UUID
    kind: str
    currency: str
    owner_id: uuid.UUID | None
    balance: int
    # Its controls (`ledger.controls`), as stored: the defaults here are a wallet's.
    status: str = "active"
    min_balance: int | None = 0
    max_balance: int | None = None

    @property
    def controls(self) -> controls.Controls:
        return controls.Controls(self.status, self.min_balance, self.max_balance)

    def controlled(self, new: controls.Controls) -> "AccountState":
        return AccountState(self.id, self.kind, self.currency, self.owner_id, self.balance,
                            new.status, new.min_balance, new.max_balance)


class EntryCommand(msgspec.Struct, frozen=True):
    """A validated request: shape, role and limits are already checked at the edge. A frozen
    Struct rather than a frozen dataclass: one is built per request, and the dataclass's
    `object.__setattr__` per field cost more than the rest of building it."""

    principal_id: uuid.UUID
    principal_role: str
    idempotency_key: str
    request_hash: bytes
    from_account_id: uuid.UUID
    to_account_id: uuid.UUID
    amount: int
    currency: str
    reference: str
    metadata: dict[str, str]
    kind: str = "transfer"
    # A refund: the original transfer and its amount, the most its refunds may add up to. What
    # cannot change (the original's accounts, kind and amount) is checked before submitting; the
    # running refunded total, which concurrent refunds change, is decided here in batch order.
    refund_of: uuid.UUID | None = None
    refundable_amount: int = 0
    # A hold's step: the hold (a new id for `hold`), how long a new hold lives, and for a capture
    # the amount (`amount` 0 = the whole hold). What a step does to the hold's money is decided
    # here from the hold's state in `BatchState.holds`, never from the request.
    hold_id: uuid.UUID | None = None
    expires_in_s: int = 0
    # An account entry's controls asked for, applied to those in force when decided (no key).
    change: controls.ControlChange | None = None


@dataclass(frozen=True, slots=True)
class HoldState:
    """A hold as the write side keeps it (`holds`): read and updated by the batch decision."""

    id: uuid.UUID
    from_account_id: uuid.UUID
    to_account_id: uuid.UUID
    amount: int
    currency: str
    reference: str
    metadata: dict[str, str]
    status: str  # pending, captured, voided or expired
    captured_amount: int
    expires_at: dt.datetime
    position: int  # of its `hold` entry
    closed_position: int | None = None
    transfer_id: uuid.UUID | None = None  # of the capture entry


@dataclass(frozen=True, slots=True)
class Committed:
    entry: JournalEntry


@dataclass(frozen=True, slots=True)
class Replayed:
    position: int


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Rejection


Outcome = Committed | Replayed | Rejected


def format_timestamp(moment: dt.datetime) -> str:
    """The one timestamp form of the journal: UTC, six fractional digits, `Z`."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> dt.datetime:
    """The aware UTC moment of a `format_timestamp` string (`fromisoformat`, in C: `strptime` with
    the format took some 12 µs a call, and the projector and the webhook worker read one per entry)."""
    return dt.datetime.fromisoformat(text)


def stamp_after(now: dt.datetime, head_committed_at: dt.datetime | None) -> dt.datetime:
    """A batch's commit time: now, but never before the previous entry's, so `committed_at` does
    not decrease along positions (clocks of API processes differ) and "the last entry committed at
    or before T" is one index lookup."""
    return now if head_committed_at is None or now >= head_committed_at else head_committed_at


def seal(
    *, position: int, transfer_id: uuid.UUID, command: EntryCommand, committed_at: str, prev_hash: str,
    hold: HoldState | None = None,
) -> JournalEntry:
    """Build the double entry for a decided command and chain it to its predecessor. A hold's
    step carries the hold's parties, currency and reference, and moves money through the
    currency's holding account (`hold_postings`)."""
    if command.kind == "transfer" or command.kind == "refund":
        postings = [Posting(command.from_account_id, -command.amount), Posting(command.to_account_id, command.amount)]
        amount, parties = command.amount, command
    else:
        postings, amount = hold_postings(command.kind, hold, captured=command.amount)
        parties = hold
    assert sum(p.amount for p in postings) == 0, "postings must sum to zero"
    unsealed = JournalEntry(
        position=position,
        transfer_id=transfer_id,
        from_account_id=parties.from_account_id,
        to_account_id=parties.to_account_id,
        amount=amount,
        currency=parties.currency,
        reference=parties.reference,
        metadata=dict(parties.metadata) if command.kind in ("transfer", "refund", "hold") else {},
        postings=postings,
        committed_at=committed_at,
        prev_hash=prev_hash,
        hash="",
        kind=command.kind,
        refund_of=command.refund_of,
        hold_id=command.hold_id,
    )
    return msgspec.structs.replace(unsealed, hash=recompute_hash(unsealed))


def seal_account(
    *, position: int, transfer_id: uuid.UUID, account: AccountState, new: controls.Controls, committed_at: str,
    prev_hash: str,
) -> JournalEntry:
    """An account entry: the controls from here on; no money moves (amount 0, no postings)."""
    unsealed = JournalEntry(
        position=position, transfer_id=transfer_id, from_account_id=account.id, to_account_id=account.id,
        amount=0, currency=account.currency, reference="", metadata={}, postings=[], committed_at=committed_at,
        prev_hash=prev_hash, hash="", kind="account", account_id=account.id, account_status=new.status,
        min_balance=new.min_balance, max_balance=new.max_balance,
    )
    return msgspec.structs.replace(unsealed, hash=recompute_hash(unsealed))


def hold_postings(kind: str, hold: HoldState, *, captured: int = 0) -> tuple[list[Posting], int]:
    """The postings of a hold's step and the entry's `amount` (the money that reached its final
    party): `hold` moves the amount from the wallet to the holding account; `capture` pays the
    captured part to the vendor and returns the rest to the wallet, in one entry; `void` and
    `expire` return it all. Postings are ordered as the store reads them back (amount, account),
    so the hash an auditor recomputes from an export is the sealed one."""
    holding = holding_account_id(hold.currency)
    if kind == "hold":
        legs, amount = [(hold.from_account_id, -hold.amount), (holding, hold.amount)], hold.amount
    elif kind == "capture":
        rest = hold.amount - captured
        legs = [(holding, -hold.amount), (hold.to_account_id, captured)] + ([(hold.from_account_id, rest)] if rest else [])
        amount = captured
    else:
        legs, amount = [(holding, -hold.amount), (hold.from_account_id, hold.amount)], hold.amount
    return [Posting(a, m) for a, m in sorted(legs, key=lambda leg: (leg[1], leg[0]))], amount


def check_hold_step(
    command: EntryCommand, hold: HoldState | None, accounts: dict[uuid.UUID, AccountState], now: dt.datetime
) -> Rejection | None:
    """A capture, void or expiry of a hold, against the hold's state as the batch has it so far:
    exactly one closing step of a hold ever commits, and what the batch clock says about
    `expires_at` decides between a capture (or void) and the expiry. Who may act was checked
    before submitting (the hold's parties do not change)."""
    assert hold is not None, "a hold's step names a hold the handler found"
    if hold.status == "expired" and command.kind == "capture":
        return Rejection.hold_expired
    if hold.status != "pending":
        return Rejection.hold_not_pending
    due = now >= hold.expires_at
    if command.kind == "capture" and due:
        return Rejection.hold_expired
    # A void past `expires_at` would close an expired hold: only the expiry may.
    if (command.kind == "void" and due) or (command.kind == "expire" and not due):
        return Rejection.hold_not_pending
    if command.kind == "capture" and command.amount > hold.amount:
        return Rejection.capture_exceeds_hold
    if command.kind == "capture":
        refusal = controls.capture_refusal(accounts[hold.to_account_id], command.amount)
        if refusal is not None:
            return Rejection(refusal)
    postings, _ = hold_postings(command.kind, hold, captured=command.amount)
    for posting in postings:
        if posting.amount > 0 and accounts[posting.account_id].balance + posting.amount > BALANCE_MAX:
            return Rejection.balance_limit_exceeded
    return None


def check(
    command: EntryCommand, accounts: dict[uuid.UUID, AccountState], refunded: dict[uuid.UUID, int]
) -> Rejection | None:
    """The contract's checks after idempotency, in its order: ownership, then business rules
    (a holding account is no one's to move by hand: `forbidden` once both accounts are found).
    A new hold is checked as a transfer from the wallet to the currency's holding account, with
    the vendor as the target whose existence and currency count."""
    source = accounts.get(command.from_account_id)
    if command.principal_role == "client" and (source is None or source.owner_id != command.principal_id):
        return Rejection.forbidden
    if command.from_account_id == command.to_account_id:
        return Rejection.same_account
    target = accounts.get(command.to_account_id)
    if source is None or target is None:
        return Rejection.account_not_found
    if is_holding_account(source) or is_holding_account(target):
        return Rejection.forbidden
    if source.currency != command.currency or target.currency != command.currency:
        return Rejection.currency_mismatch
    if command.refund_of is not None and refunded.get(command.refund_of, 0) + command.amount > command.refundable_amount:
        return Rejection.refund_exceeds_transfer
    refusal = controls.movement_refusal(source, target, command.amount, capped=command.kind == "transfer")
    if refusal is not None:
        return Rejection(refusal)
    if command.kind == "hold":
        target = accounts.get(holding_account_id(command.currency))
        assert target is not None, "the handler creates the currency's holding account before a hold"
    if target.balance + command.amount > BALANCE_MAX or source.balance - command.amount < -BALANCE_MAX:
        return Rejection.balance_limit_exceeded
    return None


@dataclass(slots=True)
class BatchState:
    """What a batch decision reads: the journal head, the touched accounts, the stored keys."""

    head_position: int
    head_hash: str
    accounts: dict[uuid.UUID, AccountState]
    # (principal_id, key) -> (request_hash, position)
    idempotency: dict[tuple[uuid.UUID, str], tuple[bytes, int]]
    # original transfer id -> the total of its committed refunds, for the batch's refunds
    refunded: dict[uuid.UUID, int] = field(default_factory=dict)
    # when the last entry was committed: a batch is never stamped earlier (see `stamp_after`)
    head_committed_at: dt.datetime | None = None
    # hold id -> its state, for the holds the batch's captures, voids and expiries name
    holds: dict[uuid.UUID, HoldState] = field(default_factory=dict)
    # the database's clock, read with the head lock: a batch's own clock is checked against it
    database_now: dt.datetime | None = None
    # account id -> its pending holds (as payer or payee), for the accounts the batch may close
    pending_holds: dict[uuid.UUID, frozenset[uuid.UUID]] = field(default_factory=dict)


@dataclass(slots=True)
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    entries: list[JournalEntry] = field(default_factory=list)
    balance_deltas: dict[uuid.UUID, int] = field(default_factory=dict)
    new_keys: list[tuple[uuid.UUID, str, bytes, int]] = field(default_factory=list)
    # Each entry's account balances right after it, in the order of its postings: stored on the
    # postings, so a statement and a balance at a position are index reads, not sums.
    balances_after: dict[int, list[int]] = field(default_factory=dict)
    # original transfer id -> (its amount, the new total refunded), for the originals refunded here
    refunded: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)
    # hold id -> its state after the batch, for the holds placed or closed here
    holds: dict[uuid.UUID, HoldState] = field(default_factory=dict)
    # account id -> its controls after the batch, for the accounts whose controls changed here
    controls: dict[uuid.UUID, controls.Controls] = field(default_factory=dict)


def decide_batch(
    commands: list[EntryCommand],
    state: BatchState,
    *,
    committed_at: str,
    now: dt.datetime | None = None,
    new_id=uuid.uuid4,
) -> BatchResult:
    """Decide each command in arrival order, each seeing the effects of the ones before it.
    `now` is the batch's clock (what `committed_at` says, as a moment): holds expire by it."""
    result = BatchResult()
    position, prev_hash = state.head_position, state.head_hash
    accounts = dict(state.accounts)
    keys = dict(state.idempotency)
    refunded = dict(state.refunded)
    holds = dict(state.holds)
    if now is None:
        now = parse_timestamp(committed_at)
    for command in commands:
        if command.kind == "account":
            outcome = _change(command, accounts, holds, state.pending_holds, result, position=position + 1,
                              prev_hash=prev_hash, committed_at=committed_at, transfer_id=new_id())
            result.outcomes.append(outcome)
            if isinstance(outcome, Committed):
                position, prev_hash = outcome.entry.position, outcome.entry.hash
            continue
        scope = (command.principal_id, command.idempotency_key)
        stored = keys.get(scope)
        if stored is not None:
            result.outcomes.append(_known_key(command, *stored))
            continue
        closing = command.kind in HOLD_CLOSING_KINDS
        hold = holds.get(command.hold_id) if closing else None
        rejection = check_hold_step(command, hold, accounts, now) if closing else check(command, accounts, refunded)
        if rejection is not None:
            result.outcomes.append(Rejected(rejection))
            continue
        position += 1
        if command.kind == "hold":
            hold = _new_hold(command, position, now)
        entry = seal(
            position=position, transfer_id=new_id(), command=command, committed_at=committed_at, prev_hash=prev_hash,
            hold=hold,
        )
        if hold is not None:
            hold = holds[hold.id] = result.holds[hold.id] = after_step(hold, entry)
        prev_hash = entry.hash
        _post(entry, accounts, result)
        if command.refund_of is not None:
            total = refunded[command.refund_of] = refunded.get(command.refund_of, 0) + command.amount
            assert total <= command.refundable_amount, "refunds passed the original amount"
            result.refunded[command.refund_of] = (command.refundable_amount, total)
        keys[scope] = (command.request_hash, position)
        result.new_keys.append((command.principal_id, command.idempotency_key, command.request_hash, position))
        result.entries.append(entry)
        result.outcomes.append(Committed(entry))
    _assert_balances(state.accounts, accounts, result)
    return result


def _change(
    command: EntryCommand, accounts: dict[uuid.UUID, AccountState], holds: dict[uuid.UUID, HoldState],
    pending_holds: dict[uuid.UUID, frozenset[uuid.UUID]], result: BatchResult, *, position: int, prev_hash: str,
    committed_at: str, transfer_id: uuid.UUID,
) -> Outcome:
    """An account entry: the change applied to the controls in force at its position, unless it
    closes an account that is not empty. Who may change what was checked before submitting."""
    account = accounts[command.from_account_id]
    new = command.change.applied_to(account.controls)
    pending = controls.pending_hold_count(account.id, pending_holds.get(account.id, frozenset()), holds)
    refusal = controls.change_refusal(account, new, pending)
    if refusal is not None:
        return Rejected(Rejection(refusal))
    entry = seal_account(position=position, transfer_id=transfer_id, account=account, new=new,
                         committed_at=committed_at, prev_hash=prev_hash)
    accounts[account.id] = account.controlled(new)
    result.controls[account.id] = new
    result.balances_after[position] = []
    result.entries.append(entry)
    return Committed(entry)


def _known_key(command: EntryCommand, stored_hash: bytes, stored_position: int) -> Outcome:
    """A key its principal used before: a replay of the same request, or a reuse for another."""
    if stored_hash == command.request_hash:
        return Replayed(stored_position)
    return Rejected(Rejection.idempotency_key_reused)


def _post(entry: JournalEntry, accounts: dict[uuid.UUID, AccountState], result: BatchResult) -> None:
    """Apply a decided entry's postings to the batch's balances, recording each balance after it."""
    after = result.balances_after[entry.position] = []
    deltas = result.balance_deltas
    for posting in entry.postings:
        before = accounts[posting.account_id]
        accounts[posting.account_id] = AccountState(  # not dataclasses.replace: this runs per posting
            before.id, before.kind, before.currency, before.owner_id, before.balance + posting.amount,
            before.status, before.min_balance, before.max_balance,
        )
        after.append(before.balance + posting.amount)
        deltas[posting.account_id] = deltas.get(posting.account_id, 0) + posting.amount


def _assert_balances(
    started: dict[uuid.UUID, AccountState], accounts: dict[uuid.UUID, AccountState], result: BatchResult
) -> None:
    """No account ends below the lowest credit line it had in the batch, unless it started lower."""
    lines = [(e.account_id, e.min_balance) for e in result.entries if e.kind == "account"] if result.controls else []
    for account_id in result.balance_deltas:
        start, balance = started[account_id], accounts[account_id].balance
        if start.min_balance is not None and balance < min(start.min_balance, start.balance):
            floors = [low for a, low in lines if a == account_id]
            assert None in floors or balance >= min(floors, default=start.min_balance), "below its min_balance"
    for hold in result.holds.values():
        assert hold.captured_amount <= hold.amount, "a capture passed its hold"
        assert accounts[holding_account_id(hold.currency)].balance >= 0, "a holding account went below zero"


def _new_hold(command: EntryCommand, position: int, now: dt.datetime) -> HoldState:
    return HoldState(
        id=command.hold_id, from_account_id=command.from_account_id, to_account_id=command.to_account_id,
        amount=command.amount, currency=command.currency, reference=command.reference,
        metadata=dict(command.metadata), status="pending", captured_amount=0,
        expires_at=now + dt.timedelta(seconds=command.expires_in_s), position=position,
    )


def after_step(hold: HoldState, entry: JournalEntry) -> HoldState:
    """The hold once `entry` (its placing or its one closing step) is applied."""
    if entry.kind == "hold":
        return hold
    return dataclasses.replace(
        hold, status=CLOSED_STATUS[entry.kind], closed_position=entry.position,
        captured_amount=entry.amount if entry.kind == "capture" else 0,
        transfer_id=entry.transfer_id if entry.kind == "capture" else None,
    )


def contiguous(entries: list[JournalEntry], *, after: int) -> list[JournalEntry]:
    """The run of `entries` (in position order) that extends position `after` without a hole:
    what a follower of the journal (projector, webhook worker) may apply next."""
    run = []
    for entry in entries:
        if entry.position != after + len(run) + 1:
            break
        run.append(entry)
    return run
