"""A statement filtered by `reference` (issue 24 #8): one index range scan on the account and the
reference, so a reference that matches nothing reads no posting at all, however large the account
(before, it walked every posting of the account: up to the 10 s statement timeout, and eight such
requests held one API process's read pool). Asserted on the plan the store's own SQL gets, not on
wall time."""

from __future__ import annotations

import pytest
import json
import uuid

import psycopg
import pytest_asyncio
from psycopg import sql

from ledger import store
from ledger.store import accounts as account_store
from tools.seed import seed_journal

ENTRIES = 20_000  # half of them payments, every one to the same vendor account
SEEDED_REFERENCE = "seed"  # what tools.seed gives every entry


@pytest_asyncio.fixture(scope="module")
async def large_account(stack) -> uuid.UUID:
    seeded = await seed_journal(stack.database_url, entries=ENTRIES, accounts=5, hot_share=1.0)
    async with await stack.superuser() as conn:
        await conn.execute("ANALYZE postings")
        await conn.execute("ANALYZE journal")
    return seeded.vendors[0]


async def _plan(stack, account_id: uuid.UUID, reference: str) -> dict:
    query, params = account_store.statement_query(account_id, after=0, limit=100, reference=reference)
    async with await stack.superuser() as conn:
        row = await (await conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params)).fetchone()
    return row[0][0]["Plan"]


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _postings_read(plan: dict) -> int:
    return sum(node["Actual Rows"] * node["Actual Loops"] for node in _nodes(plan)
               if node.get("Relation Name") == "postings")


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_a_reference_that_matches_nothing_reads_no_posting_of_a_large_account(stack, large_account):
    plan = await _plan(stack, large_account, "matches-nothing")
    assert _postings_read(plan) == 0, json.dumps(plan, indent=1)
    assert any(node.get("Index Name") == "postings_by_reference" for node in _nodes(plan)), json.dumps(plan, indent=1)


async def test_an_empty_reference_that_matches_nothing_reads_no_posting_either(stack, large_account):
    plan = await _plan(stack, large_account, "")
    assert _postings_read(plan) == 0, json.dumps(plan, indent=1)


async def test_a_matching_reference_reads_only_the_page(stack, large_account):
    plan = await _plan(stack, large_account, SEEDED_REFERENCE)
    assert _postings_read(plan) == 100, json.dumps(plan, indent=1)


async def test_the_route_answers_a_no_match_on_a_large_account_with_an_empty_last_page(stack, large_account):
    reply = await stack.client.get(f"/v1/accounts/{large_account}/entries", token=stack.admin,
                                   params={"reference": "matches-nothing"})
    assert reply.status == 200, reply.text
    assert reply.body == {"items": [], "next": None}


async def test_the_route_pages_a_matching_reference_in_position_order(stack, large_account):
    reply = await stack.client.get(f"/v1/accounts/{large_account}/entries", token=stack.admin,
                                   params={"reference": SEEDED_REFERENCE, "limit": 5})
    assert reply.status == 200, reply.text
    positions = [item["position"] for item in reply.body["items"]]
    assert len(positions) == 5 and positions == sorted(positions) and reply.body["next"] is not None
    assert {item["reference"] for item in reply.body["items"]} == {SEEDED_REFERENCE}


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_migration_0015_gives_postings_written_before_it_their_entrys_reference(postgres):
    """A journal written before 0014 (postings without a reference): migrating on fills each
    posting's from its entry, so the filtered statement finds the old entries too."""
    name = f"reference_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    a, b = uuid.uuid4(), uuid.uuid4()
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("CREATE TABLE schema_migrations (version INT8 PRIMARY KEY, name TEXT NOT NULL,"
                               " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            for version, file_name, text in store.migration_files():
                if version <= 13:
                    for statement in store.split_statements(text):
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                       (version, file_name))
            for position, reference in enumerate(["rent", "coffee"], start=1):
                await conn.execute(
                    "INSERT INTO journal (position, transfer_id, from_account_id, to_account_id, amount, currency,"
                    " reference, metadata, committed_at, prev_hash, hash) VALUES (%s, %s, %s, %s, 5, 'USD', %s,"
                    " '{}', now(), '', '')", (position, uuid.uuid4(), a, b, reference))
                await conn.execute("INSERT INTO postings (position, account_id, amount, balance_after)"
                                   " VALUES (%s, %s, -5, 0), (%s, %s, 5, 5)", (position, a, position, b))
            await store.migrate(conn)
            query, params = account_store.statement_query(b, after=0, limit=10, reference="coffee")
            rows = await (await conn.execute(query, params)).fetchall()
            references = await (await conn.execute("SELECT DISTINCT reference FROM postings ORDER BY 1")).fetchall()
        assert [row[0] for row in rows] == [2]
        assert references == [("coffee",), ("rent",)]
    finally:
        async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
