"""One failing command fails alone (issue 24 #10): the others of its group-commit batch are
answered, the failing one gets 500 `internal_error` with a request id, and no problem document
ever carries the database's error text. The reproducer: money moved by hand out of a holding
account below its pending holds made every void, capture and expiry of those holds fail its whole
batch, every second; a holding account now moves only through holds (403 `forbidden`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
import uuid

import pytest_asyncio

from ledger import committer as committer_mod
from ledger import db, domain, store

BATCH_MAX = 16


def _currency() -> str:
    """A currency of the test's own, so the holding account it breaks is no other test's."""
    return "Q" + "".join(random.choices(string.ascii_uppercase, k=2))


@pytest_asyncio.fixture
async def committer(stack):
    pool = db.make_pool(stack.database_url, role=store.API_ROLE, size_max=1, serializable=True)
    await pool.open(wait=True)
    committer = committer_mod.Committer(pool=pool, batch_max=BATCH_MAX, queue_max=BATCH_MAX, batch_linger_ms=0,
                                        commit_retries_max=5, publish=None)
    committer.start()
    yield committer
    await committer.stop()
    await pool.close()


def _transfer(source, target, amount: int, currency: str = "USD", **extra) -> domain.EntryCommand:
    return domain.EntryCommand(uuid.uuid4(), "admin", str(uuid.uuid4()), uuid.uuid4().bytes, uuid.UUID(source),
                                  uuid.UUID(target), amount, currency, "", {}, **extra)


@contextlib.asynccontextmanager
async def _damaged(stack, table: str, column: str, value, row_id):
    """A row of the write model changed behind the service's back, put back afterwards so the
    audits of later tests in the session find the database whole again."""
    async with await stack.superuser() as conn:
        select = f"SELECT {column} FROM {table} WHERE {'account_id' if table == 'balances' else 'id'} = %s"
        update = f"UPDATE {table} SET {column} = %s WHERE {'account_id' if table == 'balances' else 'id'} = %s"
        (before,) = await (await conn.execute(select, (row_id,))).fetchone()
        await conn.execute(update, (value, row_id))
        try:
            yield
        finally:
            await conn.execute(update, (before, row_id))


async def _hold(stack, currency: str) -> tuple[dict, str]:
    """A pending hold of 600 in `currency`, and its vendor's token."""
    wallet = await stack.funded_wallet(1_000, currency=currency)
    vendor = await stack.vendor(currency=currency)
    reply = await stack.client.post("/v1/holds", token=wallet.token, key=str(uuid.uuid4()), json={
        "from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "amount": 600, "currency": currency})
    assert reply.status == 201, reply.text
    return reply.body, vendor.token


def _holding_emptied(stack, currency: str):
    """The holding account no longer holds its holds' money, as an admin transfer out of it left
    it before the rule."""
    return _damaged(stack, "balances", "balance", 0, domain.holding_account_id(currency))


async def test_a_holding_account_is_never_debited_or_credited_by_hand(stack):
    currency = _currency()
    hold, vendor_token = await _hold(stack, currency)
    holding = str(domain.holding_account_id(currency))
    system = await stack.account("system", currency=currency)
    out = await stack.transfer(stack.admin, holding, system, 500, currency=currency)
    assert (out.status, out.code) == (403, "forbidden"), out.text
    into = await stack.transfer(stack.admin, system, holding, 500, currency=currency)
    assert (into.status, into.code) == (403, "forbidden"), into.text
    void = await stack.client.post(f"/v1/holds/{hold['id']}/void", token=vendor_token, key=str(uuid.uuid4()))
    assert void.status == 201, void.text


async def test_a_failing_command_fails_alone_and_the_rest_of_its_batch_commits(stack, committer):
    currency = _currency()
    hold, _ = await _hold(stack, currency)
    wallet = await stack.funded_wallet(1_000)
    vendors = [await stack.vendor() for _ in range(BATCH_MAX - 1)]
    void = _transfer(hold["from_account_id"], hold["to_account_id"], 0, currency, kind="void",
                     hold_id=uuid.UUID(hold["id"]))
    payments = [_transfer(wallet.account_id, vendor.account_id, 10) for vendor in vendors]
    # Submitted in one go, before the committer runs: one batch, the void in its middle.
    commands = payments[:7] + [void] + payments[7:]
    async with _holding_emptied(stack, currency):
        answers = await asyncio.gather(*(committer.submit(c) for c in commands), return_exceptions=True)
    failed = answers.pop(7)
    assert all(isinstance(a, committer_mod.Answer) and a.entry is not None for a in answers), answers
    assert not isinstance(failed, (committer_mod.Answer, committer_mod.Unavailable)), failed
    assert await stack.balance(wallet.account_id) == 1_000 - 10 * len(payments)


async def test_a_void_that_fails_is_500_without_the_reason_and_others_still_commit(stack):
    currency = _currency()
    hold, vendor_token = await _hold(stack, currency)
    wallet, vendor = await stack.funded_wallet(1_000), await stack.vendor()
    async with _holding_emptied(stack, currency):
        void, *payments = await asyncio.gather(
            stack.client.post(f"/v1/holds/{hold['id']}/void", token=vendor_token, key=str(uuid.uuid4())),
            *(stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10) for _ in range(8)))
    assert (void.status, void.code) == (500, "internal_error"), void.text
    assert "holding" not in void.text and "zero" not in void.text
    assert [p.status for p in payments] == [201] * 8


async def test_a_database_error_is_never_echoed_in_the_problem(stack):
    """A wallet the decision takes for one unbounded below (its `accounts` row says so) overdrawn:
    the database's overdraft CHECK (no_overdraft_below_floor) refuses it, with the account's id
    in its DETAIL."""
    wallet = await stack.funded_wallet(100)
    system = await stack.account("system")
    async with _damaged(stack, "accounts", "min_balance", None, wallet.account_id):
        reply = await stack.transfer(stack.admin, wallet.account_id, system, 500)
    assert (reply.status, reply.code) == (500, "internal_error"), reply.text
    for driver_text in ("no_overdraft", "violates", "DETAIL", "balances", wallet.account_id):
        assert driver_text not in reply.text, reply.text


async def test_an_outage_is_answered_without_the_drivers_text(stack, committer):
    """A connection the database ended: the waiters hear `Unavailable` in the committer's own words."""
    wallet, vendor = await stack.funded_wallet(1_000), await stack.vendor()
    assert (await committer.submit(_transfer(wallet.account_id, vendor.account_id, 1))).entry is not None
    async with committer._pool.connection() as conn:
        pid = conn.info.backend_pid
    async with await stack.superuser() as conn:
        await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    try:
        await committer.submit(_transfer(wallet.account_id, vendor.account_id, 1))
    except committer_mod.Unavailable as error:
        cause = error.__cause__
        assert cause is not None and str(cause).strip() and str(cause).strip() not in str(error), str(error)
    else:
        raise AssertionError("a terminated connection committed")
