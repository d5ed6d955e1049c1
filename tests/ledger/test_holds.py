"""Holds, as the contract states them, against the real database and NATS: placed, captured (in
part or whole), voided, expired by the service itself, each step one journal entry through the
currency's holding account; and exactly one closing step wins however the requests race, in one
batch or across two API processes."""

from __future__ import annotations

import pytest
import asyncio
import time
import uuid

from ledger import domain
import audit
from tests.conftest import eventually
from tests.plugins.stack import api_with

FUNDS = 1000


async def _hold(stack, wallet, vendor, amount: int = 600, *, key: str | None = None, **extra):
    body = {"from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "amount": amount,
            "currency": "USD", **extra}
    return await stack.client.post("/v1/holds", token=wallet.token, json=body, key=key or str(uuid.uuid4()))


async def _capture(client, token: str, hold_id: str, amount: int | None = None, *, key: str | None = None):
    body = {} if amount is None else {"amount": amount}
    return await client.post(f"/v1/holds/{hold_id}/capture", token=token, json=body, key=key or str(uuid.uuid4()))


async def _void(client, token: str, hold_id: str, *, key: str | None = None):
    return await client.post(f"/v1/holds/{hold_id}/void", token=token, key=key or str(uuid.uuid4()))


async def _placed(stack, amount: int = 600, **extra):
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    reply = await _hold(stack, wallet, vendor, amount, **extra)
    assert reply.status == 201, reply.text
    return wallet, vendor, reply.body


async def _account(stack, account_id: str) -> dict:
    reply = await stack.client.get(f"/v1/accounts/{account_id}", token=stack.admin)
    assert reply.status == 200, reply.text
    return reply.body


async def test_a_hold_reserves_the_money_and_shows_as_held(stack):
    wallet, vendor, hold = await _placed(stack, reference="order 7", metadata={"cart": "7"})
    assert (hold["status"], hold["amount"], hold["captured_amount"], hold["reference"]) == ("pending", 600, 0, "order 7")
    assert hold["metadata"] == {"cart": "7"} and hold["expires_at"].endswith("Z")
    account = await _account(stack, wallet.account_id)
    assert (account["balance"], account["held"]) == (FUNDS - 600, 600)
    read = await stack.client.get(f"/v1/holds/{hold['id']}", token=vendor.token)
    assert read.status == 200 and read.body == hold
    entry = await stack.client.get("/v1/journal", token=stack.admin, params={"after": hold["position"] - 1, "limit": 1})
    assert '"kind":"hold"' in entry.text and hold["id"] in entry.text


async def test_a_partial_capture_pays_the_vendor_and_returns_the_rest_in_one_entry(stack):
    wallet, vendor, hold = await _placed(stack)
    reply = await _capture(stack.client, vendor.token, hold["id"], 250)
    assert reply.status == 201, reply.text
    body = reply.body
    assert (body["status"], body["captured_amount"], body["position"]) == ("captured", 250, hold["position"])
    assert await stack.balance(wallet.account_id) == FUNDS - 250 and await stack.balance(vendor.account_id) == 250
    assert (await _account(stack, wallet.account_id))["held"] == 0
    entry = await stack.client.get(f"/v1/transfers/{body['transfer_id']}", token=vendor.token)
    assert (entry.body["kind"], entry.body["amount"], entry.body["from_account_id"]) == ("capture", 250, wallet.account_id)
    statement = await stack.client.get(f"/v1/accounts/{wallet.account_id}/entries", token=wallet.token)
    steps = [(i["kind"], i["amount"], i["counterparty_account_id"]) for i in statement.body["items"][-2:]]
    assert steps == [("hold", -600, vendor.account_id), ("capture", 350, vendor.account_id)]
    verification = await stack.client.get(
        f"/v1/vendors/{vendor.account_id}/transfers/{body['transfer_id']}/verification", token=vendor.token,
        params={"min_position": entry.body["position"], "wait_ms": 5000},
    )
    assert verification.status == 200 and verification.body["amount"] == 250


async def test_a_capture_can_be_refunded_like_a_payment(stack):
    wallet, vendor, hold = await _placed(stack)
    captured = (await _capture(stack.client, vendor.token, hold["id"])).body
    assert captured["captured_amount"] == 600
    refund = await stack.client.post(f"/v1/transfers/{captured['transfer_id']}/refunds", token=vendor.token,
                                     json={"amount": 100}, key=str(uuid.uuid4()))
    assert refund.status == 201, refund.text
    assert await stack.balance(wallet.account_id) == FUNDS - 500


async def test_a_void_returns_everything_and_closes_the_hold(stack):
    wallet, vendor, hold = await _placed(stack)
    reply = await _void(stack.client, wallet.token, hold["id"])
    assert reply.status == 201 and reply.body["status"] == "voided", reply.text
    assert await stack.balance(wallet.account_id) == FUNDS and await stack.balance(vendor.account_id) == 0
    again = await _capture(stack.client, vendor.token, hold["id"])
    assert (again.status, again.code) == (422, "hold_not_pending")
    assert (await _void(stack.client, vendor.token, hold["id"])).code == "hold_not_pending"


async def test_capture_rules_and_replays(stack):
    wallet, vendor, hold = await _placed(stack)
    over = await _capture(stack.client, vendor.token, hold["id"], 601)
    assert (over.status, over.code) == (422, "capture_exceeds_hold")
    first = await _capture(stack.client, vendor.token, hold["id"], 100, key="c1")
    again = await _capture(stack.client, vendor.token, hold["id"], 100, key="c1")
    assert first.status == again.status == 201 and again.body == first.body
    assert again.headers.get("Idempotency-Replayed") == "true"
    other = await _capture(stack.client, vendor.token, hold["id"], 101, key="c1")
    assert (other.status, other.code) == (409, "idempotency_key_reused")
    placed = await _hold(stack, wallet, vendor, 10, key="h1")
    replayed = await _hold(stack, wallet, vendor, 10, key="h1")
    assert replayed.body == placed.body and replayed.headers.get("Idempotency-Replayed") == "true"


async def test_hold_rejections_are_those_of_transfers(stack):
    wallet, vendor = await stack.funded_wallet(100), await stack.vendor()
    assert (await _hold(stack, wallet, vendor, 101)).code == "insufficient_funds"
    eur = await stack.vendor(currency="EUR")
    assert (await _hold(stack, wallet, eur, 1)).code == "currency_mismatch"
    other = await stack.funded_wallet(100)
    body = {"from_account_id": other.account_id, "to_account_id": vendor.account_id, "amount": 1, "currency": "USD"}
    stolen = await stack.client.post("/v1/holds", token=wallet.token, json=body, key="x")
    assert (stolen.status, stolen.code) == (403, "forbidden")


async def test_who_may_capture_void_and_read(stack):
    wallet, vendor, hold = await _placed(stack)
    other_vendor, stranger = await stack.vendor(), await stack.funded_wallet(0)
    for token in (wallet.token, other_vendor.token, stranger.token):
        assert (await _capture(stack.client, token, hold["id"])).code == "forbidden"
    for token in (other_vendor.token, stranger.token):
        assert (await _void(stack.client, token, hold["id"])).code == "forbidden"
        assert (await stack.client.get(f"/v1/holds/{hold['id']}", token=token)).code == "forbidden"
    absent = str(uuid.uuid4())
    assert (await stack.client.get(f"/v1/holds/{absent}", token=vendor.token)).status == 403
    assert (await stack.client.get(f"/v1/holds/{absent}", token=stack.admin)).status == 404
    assert (await _void(stack.client, vendor.token, hold["id"])).status == 201


async def test_twenty_concurrent_captures_of_one_hold_pay_once(stack):
    wallet, vendor, hold = await _placed(stack)
    replies = await asyncio.gather(*[_capture(stack.client, vendor.token, hold["id"], 100) for _ in range(20)])
    assert sorted(r.status for r in replies).count(201) == 1
    assert {r.code for r in replies if r.status != 201} == {"hold_not_pending"}
    assert await stack.balance(vendor.account_id) == 100 and await stack.balance(wallet.account_id) == FUNDS - 100


async def test_a_capture_and_a_void_at_once_one_wins(stack):
    for _ in range(5):
        wallet, vendor, hold = await _placed(stack)
        replies = await asyncio.gather(_capture(stack.client, vendor.token, hold["id"]),
                                       _void(stack.client, wallet.token, hold["id"]))
        assert sorted(r.status for r in replies) == [201, 422]
        won = next(r for r in replies if r.status == 201).body["status"]
        paid = 600 if won == "captured" else 0
        assert await stack.balance(vendor.account_id) == paid and await stack.balance(wallet.account_id) == FUNDS - paid


async def test_racing_captures_and_voids_across_two_api_processes_one_wins(stack):
    wallet, vendor, hold = await _placed(stack)
    async with api_with(stack) as other:
        clients = [stack.client, other] * 5
        replies = await asyncio.gather(
            *[_capture(c, vendor.token, hold["id"], 50) for c in clients],
            *[_void(c, wallet.token, hold["id"]) for c in clients],
        )
    assert [r.status for r in replies].count(201) == 1
    assert {r.code for r in replies if r.status != 201} == {"hold_not_pending"}
    assert await stack.balance(wallet.account_id) + await stack.balance(vendor.account_id) == FUNDS


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_an_expired_hold_is_released_by_the_service_and_cannot_be_captured(stack):
    wallet, vendor, hold = await _placed(stack, expires_in_s=1)
    placed_at = time.monotonic()

    async def expired():
        reply = await stack.client.get(f"/v1/holds/{hold['id']}", token=wallet.token)
        return reply.body if reply.body["status"] == "expired" else None

    body = await eventually(expired, timeout_s=15)
    assert time.monotonic() - placed_at < 15 and body["closed_position"] > hold["position"]
    assert await stack.balance(wallet.account_id) == FUNDS
    late = await _capture(stack.client, vendor.token, hold["id"])
    assert (late.status, late.code) == (422, "hold_expired")
    assert (await _void(stack.client, wallet.token, hold["id"])).code == "hold_not_pending"


async def test_a_capture_at_the_instant_of_expiry_has_one_outcome_across_two_processes(stack):
    wallet, vendor, hold = await _placed(stack, expires_in_s=1)
    async with api_with(stack) as other:
        replies = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            burst = await asyncio.gather(*[_capture(c, vendor.token, hold["id"]) for c in (stack.client, other)])
            replies += burst
            if any(r.status == 201 or r.code == "hold_expired" for r in burst):
                break

        async def closed():
            reply = await stack.client.get(f"/v1/holds/{hold['id']}", token=stack.admin)
            return reply.body if reply.body["status"] != "pending" else None

        final = await eventually(closed, timeout_s=15)
    captures = [r for r in replies if r.status == 201]
    assert len(captures) <= 1
    assert final["status"] == ("captured" if captures else "expired")
    paid = 600 if captures else 0
    assert await stack.balance(vendor.account_id) == paid and await stack.balance(wallet.account_id) == FUNDS - paid


async def test_the_audit_holds_with_holds_in_every_state(stack):
    wallet, vendor, hold = await _placed(stack)
    await _capture(stack.client, vendor.token, hold["id"], 1)
    _, _, voided = await _placed(stack)
    await _void(stack.client, stack.admin, voided["id"])
    await _placed(stack)  # left pending
    report = await audit.run_audit(stack.database_url)
    failed = [c for c in report.checks if not c.ok and c.name not in ("projection", "verifications")]
    assert not failed, failed
    assert next(c for c in report.checks if c.name == "holds").ok


def test_the_holding_account_is_derived_from_the_currency():
    assert domain.holding_account_id("USD") == domain.holding_account_id("USD") != domain.holding_account_id("EUR")


async def test_the_typed_client_places_captures_voids_and_reads_holds(stack):
    from client.aio import LedgerClient

    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    base = stack.client.base
    async with LedgerClient(base, token=wallet.token) as payer, LedgerClient(base, token=vendor.token) as shop:
        hold = await payer.create_hold(from_account_id=uuid.UUID(wallet.account_id),
                                       to_account_id=uuid.UUID(vendor.account_id), amount=300, currency="USD",
                                       idempotency_key="client-hold", expires_in_s=60)
        assert (hold.status, hold.amount) == ("pending", 300)
        captured = await shop.capture(hold.id, amount=100, idempotency_key="client-capture")
        assert (captured.status, captured.captured_amount) == ("captured", 100) and captured.transfer_id is not None
        other = await payer.create_hold(from_account_id=uuid.UUID(wallet.account_id),
                                        to_account_id=uuid.UUID(vendor.account_id), amount=5, currency="USD",
                                        idempotency_key="client-hold-2")
        assert (await payer.void(other.id, idempotency_key="client-void")).status == "voided"
        assert (await shop.get_hold(hold.id)) == captured


async def test_held_at_a_past_position_counts_the_holds_open_there(stack):
    wallet, vendor, hold = await _placed(stack)
    voided = await _void(stack.client, wallet.token, hold["id"])
    path = f"/v1/accounts/{wallet.account_id}"
    at_hold = await stack.client.get(path, token=wallet.token, params={"at_position": hold["position"]})
    at_void = await stack.client.get(path, token=wallet.token, params={"at_position": voided.body["closed_position"]})
    assert (at_hold.body["balance"], at_hold.body["held"]) == (FUNDS - 600, 600)
    assert (at_void.body["balance"], at_void.body["held"]) == (FUNDS, 0)


async def test_every_step_is_readable_as_a_journal_entry_with_its_hold_id(stack):
    wallet, vendor, hold = await _placed(stack)
    captured = (await _capture(stack.client, vendor.token, hold["id"], 10)).body
    entry = await stack.client.get(f"/v1/transfers/{captured['transfer_id']}", token=wallet.token)
    assert (entry.body["kind"], entry.body["hold_id"], entry.body["position"]) == (
        "capture", hold["id"], captured["closed_position"])
