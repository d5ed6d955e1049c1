"""Refunds, as the contract states them, against the real database: partial and whole, idempotent,
never more than the original in total, even when refunds race in one batch or across two API
processes (two committers with their own connections, sharing the database)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

from tests.plugins.stack import api_with

PAID = 1000


async def _paid(stack, amount: int = PAID):
    wallet = await stack.funded_wallet(amount)
    vendor = await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, amount, reference="order 1")
    assert paid.status == 201, paid.text
    return wallet, vendor, paid.body


async def _refund(client, token: str, transfer_id: str, amount: int, *, key: str | None = None, **extra):
    return await client.post(f"/v1/transfers/{transfer_id}/refunds", token=token,
                             json={"amount": amount, **extra}, key=key or str(uuid.uuid4()))


async def test_a_partial_refund_moves_money_back_and_is_a_refund_entry(stack):
    wallet, vendor, paid = await _paid(stack)
    reply = await _refund(stack.client, vendor.token, paid["id"], 400, reference="return 1", metadata={"why": "size"})
    assert reply.status == 201, reply.text
    body = reply.body
    assert (body["kind"], body["refund_of"], body["amount"]) == ("refund", paid["id"], 400)
    assert (body["from_account_id"], body["to_account_id"]) == (vendor.account_id, wallet.account_id)
    assert body["reference"] == "return 1" and body["metadata"] == {"why": "size"} and body["currency"] == "USD"
    assert await stack.balance(wallet.account_id) == 400 and await stack.balance(vendor.account_id) == 600
    for token in (wallet.token, vendor.token, stack.admin):
        read = await stack.client.get(f"/v1/transfers/{body['id']}", token=token)
        assert read.status == 200 and read.body == body
    original = await stack.client.get(f"/v1/transfers/{paid['id']}", token=stack.admin)
    assert (original.body["kind"], original.body["refund_of"]) == ("transfer", None)


async def test_refunds_add_up_to_the_original_and_no_more(stack):
    wallet, vendor, paid = await _paid(stack)
    assert (await _refund(stack.client, vendor.token, paid["id"], 600)).status == 201
    over = await _refund(stack.client, vendor.token, paid["id"], 401)
    assert (over.status, over.code) == (422, "refund_exceeds_transfer")
    assert (await _refund(stack.client, stack.admin, paid["id"], 400)).status == 201
    again = await _refund(stack.client, vendor.token, paid["id"], 1)
    assert (again.status, again.code) == (422, "refund_exceeds_transfer")
    assert await stack.balance(wallet.account_id) == PAID and await stack.balance(vendor.account_id) == 0


async def test_a_refund_replays_with_its_key_and_a_different_body_is_409(stack):
    wallet, vendor, paid = await _paid(stack)
    first = await _refund(stack.client, vendor.token, paid["id"], 100, key="r1")
    again = await _refund(stack.client, vendor.token, paid["id"], 100, key="r1")
    assert first.status == again.status == 201 and again.body == first.body
    assert again.headers.get("Idempotency-Replayed") == "true"
    other = await _refund(stack.client, vendor.token, paid["id"], 101, key="r1")
    assert (other.status, other.code) == (409, "idempotency_key_reused")
    assert await stack.balance(wallet.account_id) == 100


async def test_the_vendor_must_afford_the_refund(stack):
    wallet, vendor, paid = await _paid(stack)
    spent = await stack.transfer(stack.admin, vendor.account_id, wallet.account_id, 900)
    assert spent.status == 201, spent.text
    reply = await _refund(stack.client, vendor.token, paid["id"], 101)
    assert (reply.status, reply.code) == (422, "insufficient_funds")
    # refund_exceeds_transfer comes before insufficient_funds
    reply = await _refund(stack.client, vendor.token, paid["id"], PAID + 1)
    assert (reply.status, reply.code) == (422, "refund_exceeds_transfer")


async def test_a_refund_or_a_payment_to_a_wallet_is_not_refundable(stack):
    wallet, vendor, paid = await _paid(stack)
    refund = await _refund(stack.client, vendor.token, paid["id"], 10)
    reply = await _refund(stack.client, stack.admin, refund.body["id"], 1)
    assert (reply.status, reply.code) == (422, "not_refundable")
    other = await stack.funded_wallet(0)
    to_wallet = await stack.transfer(wallet.token, wallet.account_id, other.account_id, 5)
    reply = await _refund(stack.client, stack.admin, to_wallet.body["id"], 1)
    assert (reply.status, reply.code) == (422, "not_refundable")


async def test_who_may_refund(stack):
    wallet, vendor, paid = await _paid(stack)
    other_vendor = await stack.vendor()
    for token in (wallet.token, other_vendor.token):
        reply = await _refund(stack.client, token, paid["id"], 1)
        assert (reply.status, reply.code) == (403, "forbidden")
    absent = str(uuid.uuid4())
    assert (await _refund(stack.client, vendor.token, absent, 1)).status == 403
    reply = await _refund(stack.client, stack.admin, absent, 1)
    assert (reply.status, reply.code) == (404, "not_found")


async def test_refunds_racing_in_one_batch_never_pass_the_original(stack):
    wallet, vendor, paid = await _paid(stack)
    replies = await asyncio.gather(*[_refund(stack.client, vendor.token, paid["id"], 300) for _ in range(10)])
    statuses = sorted(r.status for r in replies)
    assert statuses.count(201) == 3 and statuses.count(422) == 7
    assert {r.code for r in replies if r.status == 422} == {"refund_exceeds_transfer"}
    assert await stack.balance(wallet.account_id) == 900 and await stack.balance(vendor.account_id) == 100


async def test_refunds_racing_across_two_api_processes_never_pass_the_original(stack):
    wallet, vendor, paid = await _paid(stack)
    async with api_with(stack) as other:
        clients = [stack.client, other] * 10
        replies = await asyncio.gather(*[_refund(c, vendor.token, paid["id"], 70) for c in clients])
    assert sorted(r.status for r in replies).count(201) == PAID // 70
    assert {r.code for r in replies if r.status != 201} == {"refund_exceeds_transfer"}
    assert await stack.balance(wallet.account_id) == (PAID // 70) * 70


async def test_the_verification_shows_the_refunded_amount(stack):
    wallet, vendor, paid = await _paid(stack)
    path = f"/v1/vendors/{vendor.account_id}/transfers/{paid['id']}/verification"
    before = await stack.client.get(path, token=vendor.token, params={"min_position": paid["position"],
                                                                      "wait_ms": 5000})
    assert before.status == 200 and before.body["refunded_amount"] == 0
    first = await _refund(stack.client, vendor.token, paid["id"], 250)
    second = await _refund(stack.client, vendor.token, paid["id"], 50)
    after = await stack.client.get(path, token=vendor.token, params={"min_position": second.body["position"],
                                                                     "wait_ms": 5000})
    assert first.status == 201 and after.status == 200 and after.body["refunded_amount"] == 300


async def test_the_journal_line_of_a_refund_carries_kind_and_refund_of_and_a_payment_neither(stack):
    wallet, vendor, paid = await _paid(stack)
    refund = await _refund(stack.client, vendor.token, paid["id"], 10)
    lines = {}
    for position in (paid["position"], refund.body["position"]):
        reply = await stack.client.get("/v1/journal", token=stack.admin, params={"after": position - 1, "limit": 1})
        lines[position] = json.loads(reply.text)
    assert "kind" not in lines[paid["position"]] and "refund_of" not in lines[paid["position"]]
    line = lines[refund.body["position"]]
    assert (line["kind"], line["refund_of"], "hold_id" in line) == ("refund", paid["id"], False)
    body = {key: value for key, value in line.items() if key != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert hashlib.sha256(line["prev_hash"].encode() + canonical).hexdigest() == line["hash"]
