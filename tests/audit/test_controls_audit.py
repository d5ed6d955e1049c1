"""The audit replays account controls: an account entry tampered with is caught by its hash, and an
entry that breaks the controls in force at its position (a payment past a cap, a debit of a frozen
wallet) is caught at that position, whether the range around it is replayed alone or summarized
by worker processes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import psycopg
import pytest

import audit
from audit import pool as audit_pool
from ledger import commands, controls, domain, store
from tests.plugins.journals import execute, first_failure

ADMIN = uuid.UUID(int=7)
RANGE_ENTRIES_SMALL = 7  # positions per worker range, so that plain ranges around the entry are summarized


async def _audited(url: str, *, with_workers: bool = False) -> audit.AuditReport:
    """The verdict alone, and (`with_workers`) with workers over small ranges: both the same."""
    alone = await audit.run_audit(url, workers=0)
    if not with_workers:
        return alone
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audit_pool, "AUDIT_RANGE_ENTRIES", RANGE_ENTRIES_SMALL)
        with_workers = await audit.run_audit(url, workers=2)
    assert (with_workers.ok, with_workers.first_failure) == (alone.ok, alone.first_failure)
    return alone


async def _accounts(url: str) -> dict[str, list[tuple[uuid.UUID, int]]]:
    """The seeded accounts by kind, each with its balance."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        rows = await (await conn.execute(
            "SELECT a.kind, a.id, b.balance FROM accounts a JOIN balances b ON b.account_id = a.id ORDER BY a.id"
        )).fetchall()
    found: dict[str, list[tuple[uuid.UUID, int]]] = {}
    for kind, account_id, balance in rows:
        found.setdefault(kind, []).append((account_id, balance))
    return found


async def _commit(url: str, batch: list[domain.EntryCommand], *, forge: dict | None = None) -> list[int]:
    """Decide and write the commands as the committer does; `forge` (account id -> what to make of
    its state) is the tamperer's: the decision sees that state instead of the one in force."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        state = await store.read_batch_state(
            conn, batch_lock=None, account_ids=list({c.from_account_id for c in batch} | {c.to_account_id for c in batch}),
            principal_ids=[c.principal_id for c in batch], keys=[c.idempotency_key for c in batch],
        )
        for account_id, forged in (forge or {}).items():
            state.accounts[account_id] = forged(state.accounts[account_id])
        now = domain.stamp_after(dt.datetime.now(dt.timezone.utc), state.head_committed_at)
        result = domain.decide_batch(batch, state, committed_at=domain.format_timestamp(now), now=now)
        assert all(isinstance(o, domain.Committed) for o in result.outcomes), result.outcomes
        await store.write_batch(conn, result, committed_at=now)
        await conn.commit()
    return [entry.position for entry in result.entries]


def _change(account_id: uuid.UUID, **asked) -> domain.EntryCommand:
    return commands.account_change(ADMIN, account_id, "USD", controls.ControlChange(**asked))


def _pay(source: uuid.UUID, target: uuid.UUID, amount: int) -> domain.EntryCommand:
    return domain.EntryCommand(
        principal_id=ADMIN, principal_role="admin", idempotency_key=str(uuid.uuid4()), request_hash=b"",
        from_account_id=source, to_account_id=target, amount=amount, currency="USD", reference="", metadata={},
    )


async def test_a_journal_with_honest_control_changes_audits_clean(seeded):
    accounts = await _accounts(seeded)
    (system, _), (vendor, balance) = accounts["system"][0], accounts["vendor"][0]
    await _commit(seeded, [_change(vendor, max_balance=balance + 20), _pay(system, vendor, 10)])
    await _commit(seeded, [_change(vendor, status="frozen"), _pay(system, vendor, 1)])  # credits reach a frozen one
    report = await _audited(seeded, with_workers=True)
    assert report.ok, report.first_failure


async def test_a_tampered_control_entry_is_caught_by_its_hash(seeded):
    accounts = await _accounts(seeded)
    (vendor, balance) = accounts["vendor"][0]
    (position,) = await _commit(seeded, [_change(vendor, max_balance=balance)])
    await execute(seeded, ("UPDATE journal SET max_balance = max_balance + 1000 WHERE position = %s", (position,)))
    report = await _audited(seeded)
    assert first_failure(report) == (position, "hash")
    print(f"\ntampered control entry: first failure {report.first_failure}")


async def test_a_payment_past_a_cap_is_caught_at_its_position(seeded):
    accounts = await _accounts(seeded)
    (system, _), (vendor, balance) = accounts["system"][0], accounts["vendor"][0]
    await _commit(seeded, [_change(vendor, max_balance=balance)])
    other_vendor, _ = accounts["vendor"][1]
    await _commit(seeded, [_pay(system, other_vendor, 1) for _ in range(2 * RANGE_ENTRIES_SMALL)])  # plain ranges
    uncapped = controls.Controls("active", 0, None)
    (position,) = await _commit(seeded, [_pay(system, vendor, 25)], forge={vendor: lambda a: a.controlled(uncapped)})
    report = await _audited(seeded, with_workers=True)
    assert first_failure(report) == (position, "controls")
    assert "above its max_balance" in report.first_failure.detail
    print(f"\npayment past a cap: first failure {report.first_failure}")


async def test_a_debit_of_a_frozen_wallet_is_caught_at_its_position(seeded):
    accounts = await _accounts(seeded)
    (system, _), (vendor, _) = accounts["system"][0], accounts["vendor"][0]
    wallet, _ = accounts["wallet"][0]
    await _commit(seeded, [_pay(system, wallet, 100), _change(wallet, status="frozen")])
    active = controls.defaults("wallet")
    (position,) = await _commit(seeded, [_pay(wallet, vendor, 100)], forge={wallet: lambda a: a.controlled(active)})
    report = await _audited(seeded)
    assert first_failure(report) == (position, "controls")
    assert "debits a frozen account" in report.first_failure.detail


async def test_closing_a_non_empty_account_in_the_journal_is_caught(seeded):
    accounts = await _accounts(seeded)
    (vendor, _) = accounts["vendor"][0]
    # The decision refuses it (account_not_empty); the tamperer decides it on an empty balance.
    (position,) = await _commit(seeded, [_change(vendor, status="closed")],
                                forge={vendor: lambda a: dataclasses.replace(a, balance=0)})
    report = await _audited(seeded)
    assert first_failure(report) == (position, "controls")
    assert "closes an account at balance" in report.first_failure.detail
