"""The committer's atomic groups (a batch in `atomic` mode): one unit, taken whole into one
transaction even past `batch_max`, committed at consecutive positions or not at all; a failing
group is taken out of its transaction's decision and the rest is decided without it."""

from __future__ import annotations

import asyncio
import uuid

import pytest_asyncio

from ledger import committer as committer_mod
from ledger import db, domain, store

BATCH_MAX = 4


@pytest_asyncio.fixture
async def committer(stack):
    pool = db.make_pool(stack.database_url, role=store.API_ROLE, size_max=1, serializable=True)
    await pool.open(wait=True)
    committer = committer_mod.Committer(pool=pool, batch_max=BATCH_MAX, queue_max=64, batch_linger_ms=0,
                                        commit_retries_max=5, publish=None)
    committer.start()
    yield committer
    await committer.stop()
    await pool.close()


def _transfer(source: str, target: str, amount: int) -> domain.EntryCommand:
    return domain.EntryCommand(uuid.uuid4(), "admin", str(uuid.uuid4()), uuid.uuid4().bytes, uuid.UUID(source),
                               uuid.UUID(target), amount, "USD", "", {})


async def test_a_group_larger_than_batch_max_commits_whole_at_consecutive_positions(stack, committer):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    others = [await stack.funded_wallet(10) for _ in range(6)]
    group = [_transfer(wallet.account_id, vendor.account_id, 1) for _ in range(3 * BATCH_MAX)]
    singles = [committer.submit(_transfer(o.account_id, vendor.account_id, 1)) for o in others]
    answers, *single_answers = await asyncio.gather(committer.submit_atomic(group), *singles)
    assert all(a.entry is not None for a in single_answers)
    positions = [a.entry.position for a in answers]
    assert positions == list(range(positions[0], positions[0] + len(group)))
    assert await stack.balance(vendor.account_id) == len(group) + len(others)


async def test_a_failing_group_is_taken_out_and_the_rest_is_decided_without_it(stack, committer):
    """Both groups land in one transaction. Had the first group's first transfer been kept, the
    second group could not pay; it is not kept, so the second pays."""
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    failing = [_transfer(wallet.account_id, vendor.account_id, 600), _transfer(wallet.account_id, vendor.account_id, 600)]
    paying = [_transfer(wallet.account_id, vendor.account_id, 700)]
    head = await stack.client.get("/v1/journal/head", token=stack.admin)
    first, second = await asyncio.gather(committer.submit_atomic(failing), committer.submit_atomic(paying))
    assert first[0] == committer_mod.ABORTED
    assert (first[1].entry, first[1].rejection) == (None, domain.Rejection.insufficient_funds)
    assert second[0].entry is not None and second[0].entry.position == head.body["position"] + 1
    assert (await stack.balance(wallet.account_id), await stack.balance(vendor.account_id)) == (300, 700)


async def test_replayed_items_of_a_group_answer_as_before_and_the_new_ones_commit_together(stack, committer):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    earlier = _transfer(wallet.account_id, vendor.account_id, 5)
    (before,) = await committer.submit_atomic([earlier])
    again = await committer.submit_atomic([earlier, _transfer(wallet.account_id, vendor.account_id, 6),
                                           _transfer(wallet.account_id, vendor.account_id, 7)])
    assert (again[0].replayed, again[0].entry) == (True, before.entry)
    assert [a.entry.position for a in again[1:]] == [again[1].entry.position, again[1].entry.position + 1]
    assert await stack.balance(vendor.account_id) == 18


def test_the_decision_takes_out_only_the_first_failing_group_and_decides_the_rest_again():
    """Pure: in the first decision both groups fail (the second because the first's first transfer
    took the money). Taking out only the first failing group and deciding again lets the second
    pay, and the single transfer between them sees the state without the first group."""
    wallet, vendor = uuid.uuid4(), uuid.uuid4()
    state = domain.BatchState(
        head_position=0, head_hash=domain.ZERO_HASH, idempotency={},
        accounts={wallet: domain.AccountState(wallet, "wallet", "USD", None, 1000),
                  vendor: domain.AccountState(vendor, "vendor", "USD", None, 0)},
    )
    pay = lambda amount: _transfer(str(wallet), str(vendor), amount)  # noqa: E731
    commands = [pay(600), pay(600), pay(100), pay(700), pay(300)]
    groups = [range(0, 2), range(3, 4)]
    result, taken_out = committer_mod._decide(commands, groups, state, domain.parse_timestamp("2026-12-07T12:00:00.000000Z"))
    assert taken_out == {0: committer_mod.ABORTED,
                         1: committer_mod.Answer(None, rejection=domain.Rejection.insufficient_funds)}
    assert [type(o).__name__ for o in result.outcomes] == ["Committed", "Committed", "Rejected"]
    assert [e.amount for e in result.entries] == [100, 700] and [e.position for e in result.entries] == [1, 2]
