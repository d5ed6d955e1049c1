"""Account lists, statements and balances at a point, as the contract states them."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
from psycopg import sql

from ledger import store


async def _history(stack):
    """A wallet funded with 1000 that pays a vendor 100, 200 (ref "b") and 300, then gets 50 back."""
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    paid = []
    for amount, reference in ((100, "a"), (200, "b"), (300, "c")):
        reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, amount, reference=reference)
        assert reply.status == 201, reply.text
        paid.append(reply.body)
    refund = await stack.client.post(f"/v1/transfers/{paid[2]['id']}/refunds", token=vendor.token,
                                     json={"amount": 50, "reference": "b"}, key=str(uuid.uuid4()))
    assert refund.status == 201, refund.text
    return wallet, vendor, paid, refund.body


async def test_the_statement_lists_each_entry_with_signed_amount_and_balance_after(stack):
    wallet, vendor, paid, refund = await _history(stack)
    reply = await stack.client.get(f"/v1/accounts/{wallet.account_id}/entries", token=wallet.token)
    assert reply.status == 200, reply.text
    items = reply.body["items"]
    assert [i["amount"] for i in items] == [1000, -100, -200, -300, 50]
    assert [i["balance_after"] for i in items] == [1000, 900, 700, 400, 450]
    assert [i["kind"] for i in items] == ["transfer"] * 4 + ["refund"]
    assert items[1]["counterparty_account_id"] == vendor.account_id and items[4]["transfer_id"] == refund["id"]
    assert items[1]["position"] == paid[0]["position"] and items[1]["committed_at"] == paid[0]["committed_at"]
    assert reply.body["next"] is None
    account = await stack.client.get(f"/v1/accounts/{wallet.account_id}", token=wallet.token,
                                     params={"at_position": items[-1]["position"]})
    assert account.body["balance"] == items[-1]["balance_after"] == 450


async def test_the_statement_pages_with_an_opaque_cursor(stack):
    wallet, vendor, paid, refund = await _history(stack)
    path = f"/v1/accounts/{vendor.account_id}/entries"
    seen, cursor = [], ""
    while True:
        reply = await stack.client.get(path, token=vendor.token, params={"limit": 2, "after": cursor})
        assert reply.status == 200, reply.text
        seen += reply.body["items"]
        cursor = reply.body["next"]
        if cursor is None:
            break
    assert [i["amount"] for i in seen] == [100, 200, 300, -50]
    assert [i["balance_after"] for i in seen] == [100, 300, 600, 550]


async def test_the_statement_filters_on_exact_reference(stack):
    wallet, vendor, paid, refund = await _history(stack)
    reply = await stack.client.get(f"/v1/accounts/{wallet.account_id}/entries", token=stack.admin,
                                   params={"reference": "b"})
    assert [(i["amount"], i["kind"]) for i in reply.body["items"]] == [(-200, "transfer"), (50, "refund")]
    none = await stack.client.get(f"/v1/accounts/{wallet.account_id}/entries", token=stack.admin,
                                  params={"reference": "B"})
    assert none.body == {"items": [], "next": None}


async def test_the_balance_at_a_position(stack):
    wallet, vendor, paid, refund = await _history(stack)
    path = f"/v1/accounts/{wallet.account_id}"
    at = await stack.client.get(path, token=wallet.token, params={"at_position": paid[1]["position"]})
    assert at.status == 200 and (at.body["balance"], at.body["position"]) == (700, paid[1]["position"])
    before_first = await stack.client.get(path, token=wallet.token, params={"at_position": paid[0]["position"] - 2})
    assert before_first.body["balance"] == 0
    zero = await stack.client.get(path, token=wallet.token, params={"at_position": 0})
    assert (zero.status, zero.body["balance"], zero.body["position"]) == (200, 0, 0)
    head = (await stack.client.get("/v1/journal/head", token=stack.admin)).body["position"]
    at_head = await stack.client.get(path, token=wallet.token, params={"at_position": head})
    assert at_head.body["balance"] == 450


async def test_a_position_past_the_head_is_422(stack):
    wallet = await stack.funded_wallet(10)
    head = (await stack.client.get("/v1/journal/head", token=stack.admin)).body["position"]
    reply = await stack.client.get(f"/v1/accounts/{wallet.account_id}", token=wallet.token,
                                   params={"at_position": head + 1000})
    assert (reply.status, reply.code) == (422, "position_out_of_range")


async def test_the_balance_as_of_a_time(stack):
    wallet, vendor, paid, refund = await _history(stack)
    path = f"/v1/accounts/{wallet.account_id}"
    stamp = paid[1]["committed_at"]
    at = await stack.client.get(path, token=wallet.token, params={"as_of": stamp})
    assert at.status == 200, at.text
    # Entries of one batch share a stamp: the answer is after the last entry at or before it.
    assert at.body["position"] >= paid[1]["position"] and at.body["balance"] in (700, 400, 450)
    early = await stack.client.get(path, token=wallet.token, params={"as_of": "2000-01-01T00:00:00Z"})
    assert (early.status, early.body["balance"], early.body["position"]) == (200, 0, 0)
    late = await stack.client.get(path, token=wallet.token,
                                  params={"as_of": (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()})
    assert late.body["balance"] == 450


async def test_at_most_one_of_at_position_and_as_of(stack):
    wallet = await stack.funded_wallet(10)
    reply = await stack.client.get(f"/v1/accounts/{wallet.account_id}", token=wallet.token,
                                   params={"at_position": 1, "as_of": "2026-01-01T00:00:00Z"})
    assert (reply.status, reply.code) == (400, "validation_error")
    for bad in ("yesterday", "2026-01-01", "2026-01-01T00:00:00"):
        reply = await stack.client.get(f"/v1/accounts/{wallet.account_id}", token=wallet.token, params={"as_of": bad})
        assert (reply.status, reply.code) == (400, "validation_error"), bad


async def test_the_account_list_shows_own_accounts_and_everything_to_admin(stack):
    wallet = await stack.funded_wallet(10)
    own = await stack.client.get("/v1/accounts", token=wallet.token)
    assert own.status == 200 and [a["id"] for a in own.body["items"]] == [wallet.account_id]
    assert own.body["items"][0]["balance"] == 10 and own.body["next"] is None
    seen, cursor = [], ""
    while cursor is not None:
        page = await stack.client.get("/v1/accounts", token=stack.admin, params={"limit": 50, "after": cursor})
        assert page.status == 200, page.text
        seen += [a["id"] for a in page.body["items"]]
        cursor = page.body["next"]
    assert seen == sorted(seen, key=uuid.UUID) and len(seen) == len(set(seen)) and wallet.account_id in seen


async def test_the_committer_writes_the_running_sum_the_migration_backfills_with(stack):
    """0004 fills balance_after of older postings with this window sum: both agree."""
    wallet, vendor, paid, refund = await _history(stack)
    async with await stack.superuser() as conn:
        rows = await (await conn.execute(
            "SELECT balance_after, sum(amount) OVER (PARTITION BY account_id ORDER BY position) FROM postings"
            " WHERE account_id = %s ORDER BY position", (uuid.UUID(wallet.account_id),))).fetchall()
    assert rows and all(stored == running for stored, running in rows)


async def test_migration_0007_backfills_balance_after_of_a_journal_written_before_it(postgres):
    """A database at v1's schema (0001..0003) with postings and no balance_after: migrating on
    fills each posting's with its account's running sum, so an old journal answers too."""
    name = f"backfill_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    a, b = uuid.uuid4(), uuid.uuid4()
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("CREATE TABLE schema_migrations (version INT8 PRIMARY KEY, name TEXT NOT NULL,"
                               " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            for version, file_name, text in store.migration_files():
                if version <= 3:
                    for statement in store.split_statements(text):
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                       (version, file_name))
            for position, (source, target, amount) in enumerate([(a, b, 5), (a, b, 7), (b, a, 3)], start=1):
                await conn.execute("INSERT INTO postings (position, account_id, amount) VALUES (%s, %s, %s), (%s, %s, %s)",
                                   (position, source, -amount, position, target, amount))
            applied = await store.migrate(conn)
            numbers = [n.split("_", 1)[0] for n in applied]
            assert {"0004", "0007", "0008"} <= set(numbers) and numbers == sorted(numbers)
            rows = await (await conn.execute(
                "SELECT account_id, balance_after FROM postings ORDER BY position, account_id = %s", (b,))).fetchall()
        assert rows == [(a, -5), (b, 5), (a, -12), (b, 12), (a, -9), (b, 9)]
    finally:
        async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
