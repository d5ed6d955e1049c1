"""A statement filtered by `reference` (issue 24 #8): one index range scan on the account and the
reference, so a reference that matches nothing reads no posting at all, however large the account
(before, it walked every posting of the account: up to the 10 s statement timeout, and eight such
requests held one API process's read pool). Asserted on the plan the store's own SQL gets, not on
wall time."""

from __future__ import annotations

import json
import uuid

import pytest_asyncio

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
