"""Account controls (status, credit line, cap): the pure rules the batch decision and audit share.

An account's controls are batch state like refund totals and holds: read under the head lock and
decided in arrival order by `domain.decide_batch`, changed only by journal entries of kind
`account`, so a change lands at one position: every entry before it under the old controls, every
entry after it under the new ones. The audit replays them from the journal with the same rules
(`violations`), so the two cannot disagree about what an entry may do.

Rules (contract v3, "Account controls"), in the contract's order of checks: `account_closed`
(nothing in or out), `account_frozen` (no debits; credits, refunds and hold releases still
arrive), `insufficient_funds` (a debit past `min_balance`), `balance_limit_exceeded` (a credit
past `max_balance`; money coming back, refunds and hold releases, is never refused by a cap).
A limit lowered below the balance is allowed: it blocks further movement the wrong way only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

import msgspec
from msgspec import UNSET, UnsetType

STATUSES = ("active", "frozen", "closed")
# Entries whose credit is money coming back to where it came from: never refused by a cap.
RELEASE_KINDS = frozenset({"refund", "void", "expire"})


@dataclass(frozen=True, slots=True)
class Controls:
    status: str
    min_balance: int | None  # None: unbounded below
    max_balance: int | None  # None: no cap


def defaults(kind: str) -> Controls:
    """An account's controls until an account entry says otherwise: active, no credit for
    wallets and vendor accounts, unbounded below for system accounts, no cap."""
    return Controls("active", None if kind == "system" else 0, None)


class ControlChange(msgspec.Struct, frozen=True):
    """What a change asks for; an UNSET field stays as it is. Decided under the head lock against
    the controls then in force, so two changes racing each other never undo each other's field."""

    status: str | UnsetType = UNSET
    min_balance: int | None | UnsetType = UNSET
    max_balance: int | None | UnsetType = UNSET

    def applied_to(self, current: Controls) -> Controls:
        return Controls(
            current.status if self.status is UNSET else self.status,
            current.min_balance if self.min_balance is UNSET else self.min_balance,
            current.max_balance if self.max_balance is UNSET else self.max_balance,
        )

    def differs_from(self, current: Controls) -> bool:
        return self.applied_to(current) != current


class Controlled(Protocol):
    """What the rules read of an account (`domain.AccountState` is one)."""

    balance: int
    status: str
    min_balance: int | None
    max_balance: int | None


def movement_refusal(source: Controlled, target: Controlled, amount: int, *, capped: bool) -> str | None:
    """The code that refuses moving `amount` from `source` to `target`, or None: after the
    existence and currency checks, in the contract's order. `capped`: whether the target's
    `max_balance` counts (not for money coming back, nor for a hold's placement, whose vendor is
    credited only at capture)."""
    if source.status == "closed" or target.status == "closed":
        return "account_closed"
    if source.status == "frozen":
        return "account_frozen"
    if source.min_balance is not None and source.balance - amount < source.min_balance:
        return "insufficient_funds"
    if capped and target.max_balance is not None and target.balance + amount > target.max_balance:
        return "balance_limit_exceeded"
    return None


def capture_refusal(vendor: Controlled, captured: int) -> str | None:
    """A capture pays the vendor from the holding account (a hold placed before a freeze may be
    captured: the frozen wallet is not debited again); the vendor may not be closed nor passed its cap."""
    if vendor.status == "closed":
        return "account_closed"
    if vendor.max_balance is not None and vendor.balance + captured > vendor.max_balance:
        return "balance_limit_exceeded"
    return None


def change_refusal(account: Controlled, new: Controls, pending_holds: int) -> str | None:
    """Closing needs a zero balance and no pending hold from or to the account."""
    if new.status == "closed" and account.status != "closed" and (account.balance != 0 or pending_holds):
        return "account_not_empty"
    return None


def pending_hold_count(account_id: uuid.UUID, stored: frozenset[uuid.UUID], batch_holds: dict) -> int:
    """The account's pending holds (as payer or payee): those stored pending before the batch,
    updated by the holds the batch placed or closed so far (`batch_holds`: id -> HoldState)."""
    pending = set(stored)
    for hold in batch_holds.values():
        if account_id in (hold.from_account_id, hold.to_account_id):
            if hold.status == "pending":
                pending.add(hold.id)
            else:
                pending.discard(hold.id)
    return len(pending)


def posting_violation(controls: Controls, *, before: int, after: int, release: bool) -> str | None:
    """What is wrong with a posting that moved an account from `before` to `after` under
    `controls` (the audit's check of each entry, from the journal alone), or None. `release`:
    the posting returns money to where it came from (a refund, a void, an expiry, the rest of a
    capture), which no cap refuses."""
    if controls.status == "closed":
        return "moves money of a closed account"
    if after < before:
        if controls.status == "frozen":
            return "debits a frozen account"
        if controls.min_balance is not None and after < controls.min_balance:
            return f"leaves it at {after}, below its min_balance {controls.min_balance}"
    elif not release and controls.max_balance is not None and after > controls.max_balance:
        return f"leaves it at {after}, above its max_balance {controls.max_balance}"
    return None
