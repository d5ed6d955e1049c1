"""A batch decided on a clock far from the database's is refused (issue 24 #11): an API process
whose clock ran hours ahead stamped its batch in the future, and every later batch, stamped after
the head, then treated pending holds as expired while the sweeper did not expire them."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

import schemas
from ledger import commands, committer, db

AHEAD = dt.timedelta(hours=3)
FUNDS = 1000
UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
BOUND = dt.timedelta(seconds=committer.CLOCK_SKEW_MAX_S)


async def _hold(stack, wallet, vendor) -> dict:
    body = {"from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "amount": 600,
            "currency": "USD", "expires_in_s": 3600}
    reply = await stack.client.post("/v1/holds", token=wallet.token, json=body, key=str(uuid.uuid4()))
    assert reply.status == 201, reply.text
    return reply.body


async def _head(stack) -> tuple[dt.datetime, dt.datetime]:
    """The journal head's `committed_at` and the database's clock."""
    async with await stack.superuser() as conn:
        return await (await conn.execute("SELECT committed_at, clock_timestamp() FROM journal_head")).fetchone()


async def test_a_process_with_a_clock_hours_ahead_is_refused_and_holds_stay_capturable(stack):
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    hold = await _hold(stack, wallet, vendor)
    pool = db.make_pool(stack.database_url, role=stack.settings.api.db_role, size_max=1, serializable=True,
                        name="skewed-commit")
    await pool.open(wait=True)
    ahead = committer.Committer(pool=pool, batch_max=8, queue_max=8, batch_linger_ms=0, commit_retries_max=2,
                                clock=lambda: dt.datetime.now(UTC) + AHEAD)
    ahead.start()
    try:
        body = schemas.TransferCreate(from_account_id=uuid.UUID(wallet.account_id),
                                      to_account_id=uuid.UUID(vendor.account_id), amount=1, currency="USD")
        command = commands.transfer(commands.Caller(uuid.UUID(wallet.owner_id), "client", str(uuid.uuid4())), body)
        with pytest.raises(committer.Unavailable, match="clock"):
            await ahead.submit(command)
    finally:
        await ahead.stop()
        await pool.close()
    committed_at, database_now = await _head(stack)
    assert committed_at <= database_now + BOUND, "a batch was stamped in the future"
    capture = await stack.client.post(f"/v1/holds/{hold['id']}/capture", token=vendor.token, json={},
                                      key=str(uuid.uuid4()))
    assert capture.status == 201, capture.text
    assert await stack.balance(vendor.account_id) == 600


def test_a_clock_within_the_bound_is_accepted_either_way():
    for offset in (BOUND, -BOUND, dt.timedelta(0)):
        committer.check_clock(T0 + offset, database_now=T0, head_committed_at=T0 - dt.timedelta(hours=1))


@pytest.mark.parametrize("offset", [BOUND + dt.timedelta(milliseconds=1), -BOUND - dt.timedelta(milliseconds=1), AHEAD, -AHEAD])
def test_a_clock_off_the_databases_by_more_than_the_bound_is_refused(offset):
    with pytest.raises(committer.ClockSkewed, match="clock"):
        committer.check_clock(T0 + offset, database_now=T0, head_committed_at=None)


def test_a_journal_head_stamped_in_the_future_refuses_the_batch_rather_than_expire_holds_early():
    """A head written far ahead (by a process before this check) would make the batch's time
    (`stamp_after`) jump there; deciding expiries by it is refused until the clocks agree."""
    with pytest.raises(committer.ClockSkewed, match="journal head"):
        committer.check_clock(T0, database_now=T0, head_committed_at=T0 + AHEAD)
    committer.check_clock(T0, database_now=T0, head_committed_at=T0 + BOUND)
