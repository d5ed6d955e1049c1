"""Account controls in the pure decision, without a database: the contract's order of checks, a
change applied at one position of a batch, freezes, closes, credit lines and caps, and money
coming back that no cap refuses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from ledger import commands, controls, domain
from ledger.controls import ControlChange
from ledger.domain import AccountState, BatchState, Committed, Rejected, Rejection

CLIENT = uuid.uuid4()
ADMIN = uuid.uuid4()
WALLET = AccountState(uuid.uuid4(), "wallet", "USD", CLIENT, 100)
VENDOR = AccountState(uuid.uuid4(), "vendor", "USD", uuid.uuid4(), 0)
SYSTEM = AccountState(uuid.uuid4(), "system", "USD", None, 0, min_balance=None)
HOLDING = AccountState(domain.holding_account_id("USD"), "system", "USD", None, 0, min_balance=None)
STAMP = "2026-01-01T00:00:00.000000Z"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def pay(amount=10, *, source=WALLET, target=VENDOR, key=None, kind="transfer", **extra) -> domain.EntryCommand:
    return domain.EntryCommand(CLIENT if source is WALLET else ADMIN, "client" if source is WALLET else "admin",
                               key or str(uuid.uuid4()), b"", source.id, target.id, amount, "USD", "", {},
                               kind=kind, **extra)


def change(account: AccountState, **asked) -> domain.EntryCommand:
    return commands.account_change(ADMIN, account.id, account.currency, ControlChange(**asked))


def decide(batch, *accounts: AccountState, **state) -> domain.BatchResult:
    return domain.decide_batch(batch, BatchState(0, domain.ZERO_HASH, {a.id: a for a in accounts}, {}, **state),
                               committed_at=STAMP, now=NOW)


def with_controls(account: AccountState, status="active", min_balance=0, max_balance=None) -> AccountState:
    return account.controlled(controls.Controls(status, min_balance, max_balance))


def codes(result: domain.BatchResult) -> list[str]:
    return ["committed" if isinstance(o, Committed) else o.reason.value for o in result.outcomes]


# ---- the order of checks --------------------------------------------------------------------------


def test_closed_comes_before_frozen_before_funds_before_the_cap():
    closed_target = with_controls(VENDOR, "closed")
    frozen_poor = with_controls(WALLET, "frozen", min_balance=0)
    assert codes(decide([pay(500, target=closed_target)], frozen_poor, closed_target)) == ["account_closed"]
    capped = with_controls(VENDOR, max_balance=5)
    assert codes(decide([pay(500, target=capped)], frozen_poor, capped)) == ["account_frozen"]
    assert codes(decide([pay(500, target=capped)], WALLET, capped)) == ["insufficient_funds"]
    assert codes(decide([pay(50, target=capped)], WALLET, capped)) == ["balance_limit_exceeded"]


def test_existence_and_currency_come_before_the_controls():
    closed = with_controls(WALLET, "closed")
    euro = dataclasses.replace(VENDOR, currency="EUR")
    assert codes(decide([pay(10, target=euro)], closed, euro)) == ["currency_mismatch"]
    assert codes(decide([pay(10, source=closed, target=closed)], closed)) == ["same_account"]


# ---- a change lands at one position ---------------------------------------------------------------


def test_a_freeze_in_a_batch_applies_to_what_follows_it_only():
    result = decide([pay(10), change(WALLET, status="frozen"), pay(10), pay(10, source=SYSTEM, target=WALLET)],
                    WALLET, VENDOR, SYSTEM)
    assert codes(result) == ["committed", "committed", "account_frozen", "committed"]
    freeze = result.entries[1]
    assert (freeze.kind, freeze.position, freeze.account_id, freeze.account_status) == ("account", 2, WALLET.id, "frozen")
    assert (freeze.postings, freeze.amount, freeze.min_balance, freeze.max_balance) == ([], 0, 0, None)
    assert freeze.hash == domain.recompute_hash(freeze) and result.entries[2].prev_hash == freeze.hash
    assert result.controls == {WALLET.id: controls.Controls("frozen", 0, None)}
    assert result.new_keys and all(key[3] != 2 for key in result.new_keys)  # an account entry stores no key


def test_a_change_keeps_the_fields_it_does_not_name():
    capped = with_controls(VENDOR, "frozen", max_balance=70)
    result = decide([change(capped, min_balance=-30)], capped)
    assert result.controls[VENDOR.id] == controls.Controls("frozen", -30, 70)


def test_a_credit_line_is_decided_against_the_balance_in_the_batch():
    result = decide([change(WALLET, min_balance=-50), pay(120), pay(30), change(WALLET, min_balance=0), pay(1)],
                    WALLET, VENDOR)
    assert codes(result) == ["committed", "committed", "committed", "committed", "insufficient_funds"]
    assert result.balance_deltas[WALLET.id] == -150


def test_a_system_account_is_unbounded_until_bounded():
    assert codes(decide([pay(10**9, source=SYSTEM, target=WALLET)], SYSTEM, WALLET)) == ["committed"]
    result = decide([change(SYSTEM, min_balance=-5), pay(6, source=SYSTEM, target=WALLET)], SYSTEM, WALLET)
    assert codes(result) == ["committed", "insufficient_funds"]


# ---- close ---------------------------------------------------------------------------------------


def test_only_an_empty_account_closes():
    empty = dataclasses.replace(VENDOR, balance=0)
    assert codes(decide([change(WALLET, status="closed")], WALLET)) == ["account_not_empty"]
    assert codes(decide([change(empty, status="closed")], empty)) == ["committed"]
    pending = {empty.id: frozenset({uuid.uuid4()})}
    assert codes(decide([change(empty, status="closed")], empty, pending_holds=pending)) == ["account_not_empty"]


def test_a_hold_placed_earlier_in_the_batch_keeps_the_account_open():
    empty_vendor = dataclasses.replace(VENDOR, balance=0)
    place = pay(40, kind="hold", hold_id=uuid.uuid4(), expires_in_s=60)
    result = decide([place, change(empty_vendor, status="closed")], WALLET, empty_vendor, HOLDING)
    assert codes(result) == ["committed", "account_not_empty"]


# ---- holds and money coming back ---------------------------------------------------------------


def placed_hold(amount=40) -> tuple[domain.HoldState, dict[uuid.UUID, AccountState]]:
    hold_id = uuid.uuid4()
    result = decide([pay(amount, kind="hold", hold_id=hold_id, expires_in_s=60)], WALLET, VENDOR, HOLDING)
    moved = {a.id: dataclasses.replace(a, balance=a.balance + result.balance_deltas.get(a.id, 0))
             for a in (WALLET, VENDOR, HOLDING)}
    return result.holds[hold_id], moved


def step(kind, hold, amount=0) -> domain.EntryCommand:
    return domain.EntryCommand(ADMIN, "admin", str(uuid.uuid4()), b"", hold.from_account_id, hold.to_account_id,
                               amount or hold.amount, "USD", "", {}, kind=kind, hold_id=hold.id)


def test_a_frozen_wallet_places_no_hold_but_one_placed_before_is_captured_and_its_rest_returns():
    frozen = with_controls(WALLET, "frozen")
    assert codes(decide([pay(10, kind="hold", hold_id=uuid.uuid4(), expires_in_s=60)], frozen, VENDOR, HOLDING)) == [
        "account_frozen"]
    hold, accounts = placed_hold(40)
    accounts[WALLET.id] = with_controls(accounts[WALLET.id], "frozen", max_balance=0)  # and capped below it
    result = decide([step("capture", hold, 15)], *accounts.values(), holds={hold.id: hold})
    assert codes(result) == ["committed"]
    assert result.balance_deltas == {HOLDING.id: -40, VENDOR.id: 15, WALLET.id: 25}


@pytest.mark.parametrize("kind", ["void", "expire"])
def test_a_release_reaches_a_frozen_capped_wallet(kind):
    hold, accounts = placed_hold(40)
    accounts[WALLET.id] = with_controls(accounts[WALLET.id], "frozen", max_balance=0)
    later = NOW + dt.timedelta(seconds=61 if kind == "expire" else 0)
    result = domain.decide_batch([step(kind, hold)], BatchState(0, domain.ZERO_HASH, accounts, {}, holds={hold.id: hold}),
                                 committed_at=STAMP, now=later)
    assert codes(result) == ["committed"]


def test_a_capture_past_the_vendors_cap_is_refused():
    hold, accounts = placed_hold(40)
    accounts[VENDOR.id] = with_controls(accounts[VENDOR.id], max_balance=10)
    result = decide([step("capture", hold, 15)], *accounts.values(), holds={hold.id: hold})
    assert codes(result) == ["balance_limit_exceeded"]


def test_a_refund_reaches_a_capped_wallet():
    capped = with_controls(WALLET, max_balance=100)
    paid_vendor = dataclasses.replace(VENDOR, balance=50)
    refund = domain.EntryCommand(ADMIN, "admin", "r", b"", paid_vendor.id, capped.id, 50, "USD", "", {},
                                 kind="refund", refund_of=uuid.uuid4(), refundable_amount=50)
    assert codes(decide([refund], capped, paid_vendor)) == ["committed"]


# ---- the audit's rule, the same one --------------------------------------------------------------


@pytest.mark.parametrize("in_force, before, after, release, wrong", [
    (controls.Controls("frozen", 0, None), 10, 5, False, "debits a frozen account"),
    (controls.Controls("frozen", 0, None), 10, 15, False, None),
    (controls.Controls("closed", 0, None), 0, 1, True, "moves money of a closed account"),
    (controls.Controls("active", -50, None), 0, -51, False, "below its min_balance -50"),
    (controls.Controls("active", 0, 100), 90, 101, False, "above its max_balance 100"),
    (controls.Controls("active", 0, 100), 90, 101, True, None),
    (controls.Controls("active", 0, 100), 150, 140, False, None),  # a lowered cap blocks credits only
])
def test_the_audits_posting_rule(in_force, before, after, release, wrong):
    found = controls.posting_violation(in_force, before=before, after=after, release=release)
    assert (found is None) == (wrong is None) and (wrong is None or wrong in found)
