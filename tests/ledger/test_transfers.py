"""The write path, as the contract states it, against the real database."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from ledger import store


async def test_payment_commits_and_moves_both_balances(stack):
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 250, reference="order 7",
                                 metadata={"order": "7"})
    assert reply.status == 201, reply.text
    body = reply.body
    assert body["status"] == "committed" and body["amount"] == 250 and body["reference"] == "order 7"
    assert body["metadata"] == {"order": "7"} and len(body["hash"]) == 64 and body["position"] >= 1
    assert await stack.balance(wallet.account_id) == 750
    assert await stack.balance(vendor.account_id) == 250
    read = await stack.client.get(f"/v1/transfers/{body['id']}", token=wallet.token)
    assert read.status == 200 and read.body == body


async def test_fifty_concurrent_payments_from_a_wallet_that_affords_twenty_commit_twenty(stack):
    wallet = await stack.funded_wallet(20 * 100)
    vendor = await stack.vendor()
    replies = await asyncio.gather(*[
        stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 100) for _ in range(50)
    ])
    statuses = sorted(r.status for r in replies)
    assert statuses.count(201) == 20
    assert statuses.count(422) == 30
    assert {r.code for r in replies if r.status == 422} == {"insufficient_funds"}
    assert await stack.balance(wallet.account_id) == 0
    assert await stack.balance(vendor.account_id) == 2000


async def test_twenty_concurrent_requests_with_one_key_apply_once(stack):
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    replies = await asyncio.gather(*[
        stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10, key="same-key") for _ in range(20)
    ])
    assert {r.status for r in replies} == {201}
    assert len({r.body["id"] for r in replies}) == 1
    assert sum(r.headers.get("Idempotency-Replayed") == "true" for r in replies) == 19
    assert await stack.balance(wallet.account_id) == 990


async def test_replay_returns_same_answer_and_writes_nothing(stack):
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    first = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 5, key="k1")
    again = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 5, key="k1")
    assert first.status == again.status == 201
    assert again.headers["Idempotency-Replayed"] == "true" and "Idempotency-Replayed" not in first.headers
    assert again.body == first.body
    assert await stack.balance(wallet.account_id) == 995


async def test_same_key_with_different_body_is_409(stack):
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    assert (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 5, key="k2")).status == 201
    reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 6, key="k2")
    assert reply.status == 409 and reply.code == "idempotency_key_reused"
    assert await stack.balance(wallet.account_id) == 995


async def test_keys_are_scoped_to_the_principal(stack):
    a = await stack.funded_wallet(100)
    b = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    first = await stack.transfer(a.token, a.account_id, vendor.account_id, 10, key="shared")
    second = await stack.transfer(b.token, b.account_id, vendor.account_id, 10, key="shared")
    assert first.status == second.status == 201 and first.body["id"] != second.body["id"]


async def test_a_rejected_request_does_not_use_up_its_key(stack):
    wallet = await stack.funded_wallet(0)
    vendor = await stack.vendor()
    refused = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 50, key="retry-me")
    assert refused.status == 422 and refused.code == "insufficient_funds"
    funding = await stack.account("system")
    assert (await stack.transfer(stack.admin, funding, wallet.account_id, 50)).status == 201
    retried = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 50, key="retry-me")
    assert retried.status == 201 and "Idempotency-Replayed" not in retried.headers


@pytest.mark.parametrize("case", ["same_account", "account_not_found", "currency_mismatch", "insufficient_funds"])
async def test_business_rejections_are_422_and_write_nothing(stack, case):
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    eur_vendor = await stack.vendor(currency="EUR")
    target = {
        "same_account": wallet.account_id,
        "account_not_found": str(uuid.uuid4()),
        "currency_mismatch": eur_vendor.account_id,
        "insufficient_funds": vendor.account_id,
    }[case]
    amount = 1000 if case == "insufficient_funds" else 10
    async with await stack.superuser() as conn:
        head_before = (await store.journal_head(conn)).position
    reply = await stack.transfer(wallet.token, wallet.account_id, target, amount)
    assert reply.status == 422 and reply.code == case, reply.text
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert await stack.balance(wallet.account_id) == 100
    async with await stack.superuser() as conn:
        rows = await (await conn.execute(
            "SELECT count(*) FROM postings WHERE account_id = %s AND position > %s",
            (uuid.UUID(wallet.account_id), head_before),
        )).fetchone()
    assert rows[0] == 0


async def test_rule_order_same_account_before_not_found(stack):
    missing = str(uuid.uuid4())
    reply = await stack.transfer(stack.admin, missing, missing, 5)
    assert reply.status == 422 and reply.code == "same_account"


async def test_currency_of_the_request_must_match_the_accounts(stack):
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 5, currency="EUR")
    assert reply.status == 422 and reply.code == "currency_mismatch"


async def test_client_may_not_spend_from_someone_elses_wallet(stack):
    mine = await stack.funded_wallet(100)
    theirs = await stack.funded_wallet(100)
    reply = await stack.transfer(mine.token, theirs.account_id, mine.account_id, 5)
    assert reply.status == 403 and reply.code == "forbidden"
    missing = await stack.transfer(mine.token, str(uuid.uuid4()), mine.account_id, 5)
    assert missing.status == 403 and missing.code == "forbidden"
    assert await stack.balance(theirs.account_id) == 100


async def test_system_accounts_may_go_negative_and_money_is_conserved(stack):
    funding = await stack.account("system", currency="JPY")
    wallet = await stack.funded_wallet(0, currency="JPY")
    assert (await stack.transfer(stack.admin, funding, wallet.account_id, 700, currency="JPY")).status == 201
    assert await stack.balance(funding) == -700
    assert await stack.balance(funding) + await stack.balance(wallet.account_id) == 0


async def test_account_read_is_exact_at_the_journal_head(stack):
    wallet = await stack.funded_wallet(100)
    reply = await stack.client.get(f"/v1/accounts/{wallet.account_id}", token=wallet.token)
    head = await stack.client.get("/v1/journal/head", token=stack.admin)
    assert reply.status == 200 and reply.body["balance"] == 100
    assert 1 <= reply.body["position"] <= head.body["position"]


async def test_account_creation_is_idempotent_by_id(stack):
    client_id, _ = await stack.principal("client")
    account_id = str(uuid.uuid4())
    body = {"id": account_id, "kind": "wallet", "currency": "USD", "owner_id": client_id}
    first = await stack.client.post("/v1/accounts", token=stack.admin, json=body)
    again = await stack.client.post("/v1/accounts", token=stack.admin, json=body)
    other = await stack.client.post("/v1/accounts", token=stack.admin, json={**body, "currency": "EUR"})
    assert (first.status, again.status, other.status) == (201, 200, 409)
    assert other.code == "account_exists" and again.body["id"] == account_id


async def test_the_api_role_cannot_update_or_delete_the_journal(stack):
    wallet = await stack.funded_wallet(100)
    async with await stack.superuser() as conn:
        await conn.execute("SET ROLE ledger_api")
        for statement in ("UPDATE journal SET amount = amount + 1", "DELETE FROM journal",
                          "UPDATE postings SET amount = 0", "DELETE FROM postings"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)
        row = await (await conn.execute("SELECT count(*) FROM journal")).fetchone()
        assert row[0] >= 1
    assert await stack.balance(wallet.account_id) == 100


async def test_a_serialization_failure_is_retried_and_succeeds(stack):
    """A second SERIALIZABLE transaction holds the wallet's balance row and then writes it, so the
    committer's UPDATE, whose snapshot predates that commit, fails with 40001; the retry commits."""
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    from ledger import metrics

    retries_before = metrics.SERIALIZATION_RETRIES._value.get()
    async with await stack.superuser() as blocker:
        await blocker.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        await blocker.execute("SELECT balance FROM balances WHERE account_id = %s FOR UPDATE",
                              (uuid.UUID(wallet.account_id),))
        pending = asyncio.create_task(stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10))
        await _wait_for_lock_waiter(stack)
        await blocker.execute("UPDATE balances SET balance = balance WHERE account_id = %s",
                              (uuid.UUID(wallet.account_id),))
        await blocker.execute("COMMIT")
        reply = await pending
    assert reply.status == 201, reply.text
    assert metrics.SERIALIZATION_RETRIES._value.get() > retries_before
    assert await stack.balance(wallet.account_id) == 90


async def test_a_batch_waits_for_the_head_without_a_serialization_failure(stack):
    """Another writer holding the journal head makes the next batch wait its turn (LOCK TABLE
    before any snapshot), not fail and retry: several API processes do not storm on 40001."""
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    from ledger import metrics

    retries_before = metrics.SERIALIZATION_RETRIES._value.get()
    async with await stack.superuser() as other:
        await other.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        await other.execute("LOCK TABLE journal_head IN EXCLUSIVE MODE")
        await other.execute("UPDATE journal_head SET hash = hash WHERE id = 1")
        pending = asyncio.create_task(stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10))
        await _wait_for_lock_waiter(stack)
        await other.execute("COMMIT")
        reply = await pending
    assert reply.status == 201, reply.text
    assert metrics.SERIALIZATION_RETRIES._value.get() == retries_before


async def _wait_for_lock_waiter(stack) -> None:
    from tests.conftest import eventually

    async def waiting():
        async with await stack.superuser() as conn:
            row = await (await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )).fetchone()
        return row[0] >= 1

    await eventually(waiting, timeout_s=10)


async def test_awkward_text_round_trips_exactly(stack):
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    reference = 'quote " backslash \\ braces {a,b} NULL comma, é 漢字 \\x00'
    metadata = {'k"ey\\': 'v{a}l,ue "NULL"', "empty": ""}
    key = 'key with "quotes" and \\ and {braces},'
    reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 3, reference=reference,
                                 metadata=metadata, key=key)
    assert reply.status == 201, reply.text
    read = await stack.client.get(f"/v1/transfers/{reply.body['id']}", token=stack.admin)
    assert read.body["reference"] == reference and read.body["metadata"] == metadata
    assert read.body["hash"] == reply.body["hash"]
    again = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 3, reference=reference,
                                 metadata=metadata, key=key)
    assert again.headers["Idempotency-Replayed"] == "true" and again.body == reply.body


async def test_the_bearer_scheme_is_case_insensitive(stack):
    reply = await stack.client.get("/v1/journal/head", headers={"Authorization": f"bearer {stack.admin}"})
    assert reply.status == 200


async def test_a_credit_past_the_int8_range_is_a_422_not_a_failed_batch(stack):
    funding = await stack.account("system")
    vendor = await stack.vendor()
    big = 2**53 - 1
    replies = await asyncio.gather(*[stack.transfer(stack.admin, funding, vendor.account_id, big) for _ in range(1025)])
    assert {r.status for r in replies} == {201, 422}
    assert {r.code for r in replies if r.status == 422} == {"balance_limit_exceeded"}
    assert await stack.balance(vendor.account_id) == sum(big for r in replies if r.status == 201)
