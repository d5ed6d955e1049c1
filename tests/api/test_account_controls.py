"""Account controls through the API (contract v3): credit lines, caps, freeze and close, each change
a journal entry of its own decided at one position, who may change them, and bad input."""

from __future__ import annotations

import asyncio
import json
import uuid

import msgspec
import pytest

import audit
import schemas
from ledger import domain
from proofs import merkle
from tests.conftest import eventually

PAYMENTS_RACING = 50


async def _patch(stack, account_id: str, body: dict, *, token: str | None = None):
    return await stack.client.request("PATCH", f"/v1/accounts/{account_id}", token=token or stack.admin, json=body)


async def _changed(stack, account_id: str, **body) -> dict:
    reply = await _patch(stack, account_id, body)
    assert reply.status == 200, reply.text
    return reply.body


async def _account(stack, account_id: str) -> dict:
    reply = await stack.client.get(f"/v1/accounts/{account_id}", token=stack.admin)
    assert reply.status == 200, reply.text
    return reply.body


async def _journal(stack, after: int = 0) -> list[schemas.JournalEntry]:
    entries, limit = [], 10_000
    while True:
        reply = await stack.client.get("/v1/journal", token=stack.admin, params={"after": after, "limit": limit})
        assert reply.status == 200, reply.text
        page = [msgspec.json.decode(line, type=schemas.JournalEntry) for line in reply.text.splitlines() if line]
        entries += page
        if len(page) < limit:
            return entries
        after = page[-1].position


async def _account_entries(stack, account_id: str, after: int = 0) -> list[schemas.JournalEntry]:
    return [e for e in await _journal(stack, after) if e.kind == "account" and str(e.account_id) == account_id]


# ---- what an account shows, and the defaults ----------------------------------------------------


async def test_accounts_show_their_controls_with_the_kinds_defaults(stack):
    wallet = await stack.funded_wallet(0)
    system = await stack.account("system")
    shown = await _account(stack, wallet.account_id)
    assert (shown["status"], shown["min_balance"], shown["max_balance"]) == ("active", 0, None)
    shown = await _account(stack, system)
    assert (shown["status"], shown["min_balance"], shown["max_balance"]) == ("active", None, None)
    listed = await stack.client.get("/v1/accounts", token=wallet.token)
    assert [(a["status"], a["min_balance"]) for a in listed.body["items"]] == [("active", 0)]
    # A default account has no account entry.
    assert await _account_entries(stack, wallet.account_id) == []


async def test_an_account_created_with_limits_has_them_from_an_account_entry(stack):
    owner, _ = await stack.principal("client")
    body = {"kind": "wallet", "currency": "USD", "owner_id": owner, "min_balance": -500, "max_balance": 1000}
    reply = await stack.client.post("/v1/accounts", token=stack.admin, json=body)
    assert reply.status == 201, reply.text
    assert (reply.body["min_balance"], reply.body["max_balance"]) == (-500, 1000)
    (entry,) = await _account_entries(stack, reply.body["id"])
    assert (entry.account_status, entry.min_balance, entry.max_balance, entry.postings, entry.amount) == (
        "active", -500, 1000, [], 0)
    again = await stack.client.post("/v1/accounts", token=stack.admin, json={**body, "id": reply.body["id"]})
    assert again.status == 200, again.text
    other = await stack.client.post("/v1/accounts", token=stack.admin,
                                    json={**body, "id": reply.body["id"], "max_balance": 5})
    assert (other.status, other.code) == (409, "account_exists")


async def test_a_creation_cut_off_before_its_account_entry_completes_when_repeated(stack):
    owner, _ = await stack.principal("client")
    plain = await stack.client.post("/v1/accounts", token=stack.admin,
                                    json={"kind": "wallet", "currency": "USD", "owner_id": owner})
    body = {"id": plain.body["id"], "kind": "wallet", "currency": "USD", "owner_id": owner, "max_balance": 700}
    again = await stack.client.post("/v1/accounts", token=stack.admin, json=body)
    assert (again.status, again.body["max_balance"]) == (200, 700), again.text
    assert len(await _account_entries(stack, plain.body["id"])) == 1


# ---- freeze ------------------------------------------------------------------------------------


async def test_a_frozen_wallet_cannot_pay_but_still_receives_and_pays_once_unfrozen(stack):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    frozen = await _changed(stack, wallet.account_id, status="frozen")
    assert frozen["status"] == "frozen"
    refused = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 100)
    assert (refused.status, refused.code) == (422, "account_frozen")
    funding = await stack.account("system")
    assert (await stack.transfer(stack.admin, funding, wallet.account_id, 50)).status == 201
    assert (await _changed(stack, wallet.account_id, status="active"))["status"] == "active"
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 100)
    assert paid.status == 201, paid.text
    assert await stack.balance(wallet.account_id) == 950


async def test_holds_respect_a_freeze_but_one_placed_before_it_is_captured_or_released(stack):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    hold_body = {"from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "amount": 300,
                 "currency": "USD"}
    placed = [await stack.client.post("/v1/holds", token=wallet.token, json=hold_body, key=str(uuid.uuid4()))
              for _ in range(2)]
    assert [r.status for r in placed] == [201, 201]
    await _changed(stack, wallet.account_id, status="frozen")
    refused = await stack.client.post("/v1/holds", token=wallet.token, json=hold_body, key=str(uuid.uuid4()))
    assert (refused.status, refused.code) == (422, "account_frozen")
    captured = await stack.client.post(f"/v1/holds/{placed[0].body['id']}/capture", token=vendor.token, json={},
                                       key=str(uuid.uuid4()))
    assert captured.status == 201, captured.text
    voided = await stack.client.post(f"/v1/holds/{placed[1].body['id']}/void", token=wallet.token,
                                     key=str(uuid.uuid4()))
    assert voided.status == 201, voided.text
    assert (await stack.balance(wallet.account_id), await stack.balance(vendor.account_id)) == (700, 300)


async def test_a_frozen_vendor_cannot_refund(stack):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 400)
    await _changed(stack, vendor.account_id, status="frozen")
    refund = await stack.client.post(f"/v1/transfers/{paid.body['id']}/refunds", token=vendor.token,
                                     json={"amount": 100}, key=str(uuid.uuid4()))
    assert (refund.status, refund.code) == (422, "account_frozen")


# ---- close -------------------------------------------------------------------------------------


async def test_only_an_empty_account_closes_and_then_nothing_moves_in_or_out(stack):
    wallet, vendor = await stack.funded_wallet(100), await stack.vendor()
    refused = await _patch(stack, wallet.account_id, {"status": "closed"})
    assert (refused.status, refused.code) == (422, "account_not_empty")
    assert (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 100)).status == 201
    hold = await stack.client.post("/v1/holds", token=stack.admin, key=str(uuid.uuid4()), json={
        "from_account_id": (await stack.funded_wallet(50)).account_id, "to_account_id": vendor.account_id,
        "amount": 50, "currency": "USD"})
    assert hold.status == 201, hold.text
    await _changed(stack, vendor.account_id, status="frozen")  # not closing: allowed with a hold pending
    refused = await _patch(stack, vendor.account_id, {"status": "closed"})
    assert (refused.status, refused.code) == (422, "account_not_empty")  # a balance and a hold to it
    assert (await _changed(stack, wallet.account_id, status="closed"))["status"] == "closed"
    funding = await stack.account("system")
    into = await stack.transfer(stack.admin, funding, wallet.account_id, 10)
    assert (into.status, into.code) == (422, "account_closed")
    out = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1)
    assert (out.status, out.code) == (422, "account_closed")


# ---- credit lines and caps ---------------------------------------------------------------------


async def test_a_credit_line_lets_a_wallet_go_below_zero_down_to_it(stack):
    wallet, vendor = await stack.funded_wallet(0), await stack.vendor()
    await _changed(stack, wallet.account_id, min_balance=-500)
    assert (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 300)).status == 201
    past = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 201)
    assert (past.status, past.code) == (422, "insufficient_funds")
    # Raised back to 0 below the balance: allowed; it blocks further debits only.
    raised = await _changed(stack, wallet.account_id, min_balance=0)
    assert (raised["balance"], raised["min_balance"]) == (-300, 0)
    again = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1)
    assert (again.status, again.code) == (422, "insufficient_funds")
    funding = await stack.account("system")
    assert (await stack.transfer(stack.admin, funding, wallet.account_id, 100)).status == 201
    assert await stack.balance(wallet.account_id) == -200


async def test_a_cap_refuses_credits_past_it_but_never_money_coming_back(stack):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    await _changed(stack, vendor.account_id, max_balance=500)
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 500)
    assert paid.status == 201, paid.text
    past = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1)
    assert (past.status, past.code) == (422, "balance_limit_exceeded")
    await _changed(stack, wallet.account_id, max_balance=500)  # below the wallet's 500 after paying: allowed
    refund = await stack.client.post(f"/v1/transfers/{paid.body['id']}/refunds", token=vendor.token,
                                     json={"amount": 400}, key=str(uuid.uuid4()))
    assert refund.status == 201, refund.text  # back to 900, past the wallet's cap: a refund is never capped
    funding = await stack.account("system")
    more = await stack.transfer(stack.admin, funding, wallet.account_id, 1)
    assert (more.status, more.code) == (422, "balance_limit_exceeded")


async def test_a_system_account_may_be_bounded_and_unbounded_again(stack):
    system, wallet = await stack.account("system"), await stack.funded_wallet(0)
    await _changed(stack, system, min_balance=-100)
    past = await stack.transfer(stack.admin, system, wallet.account_id, 101)
    assert (past.status, past.code) == (422, "insufficient_funds")
    assert (await _changed(stack, system, min_balance=None))["min_balance"] is None
    assert (await stack.transfer(stack.admin, system, wallet.account_id, 101)).status == 201


# ---- the account entry --------------------------------------------------------------------------


async def test_a_change_is_an_entry_its_owner_reads_that_statements_leave_out(stack):
    wallet = await stack.funded_wallet(100)
    await _changed(stack, wallet.account_id, status="frozen", max_balance=5000)
    (entry,) = await _account_entries(stack, wallet.account_id)
    assert (entry.kind, entry.account_status, entry.min_balance, entry.max_balance) == ("account", "frozen", 0, 5000)
    assert entry.hash == domain.recompute_hash(entry)
    shown = await stack.client.get(f"/v1/transfers/{entry.transfer_id}", token=wallet.token)
    assert shown.status == 200, shown.text
    assert (shown.body["kind"], shown.body["account_status"], shown.body["postings"]) == ("account", "frozen", [])
    outsider = (await stack.funded_wallet(0)).token
    assert (await stack.client.get(f"/v1/transfers/{entry.transfer_id}", token=outsider)).status == 403
    statement = await stack.client.get(f"/v1/accounts/{wallet.account_id}/entries", token=wallet.token)
    assert [item["kind"] for item in statement.body["items"]] == ["transfer"]
    asked = await stack.client.get(f"/v1/accounts/{wallet.account_id}/entries", token=wallet.token,
                                   params={"kind": "account"})
    assert [(i["transfer_id"], i["amount"], i["balance_after"]) for i in asked.body["items"]] == [
        (str(entry.transfer_id), 0, 100)]
    # In the Merkle tree like every entry: its owner proves it (the tree follower went past it).
    proof = await eventually(lambda: _proof(stack, wallet.token, entry.position), what="the tree reaching the entry")
    assert proof.body["leaf_hash"] == merkle.entry_leaf(entry.hash).hex()


async def _proof(stack, token: str, position: int):
    reply = await stack.client.get("/v1/journal/proofs/inclusion", token=token, params={"position": position})
    assert reply.status in (200, 503), reply.text  # 503 tree_behind while the follower catches up
    return reply if reply.status == 200 else None


# ---- who may change controls, and bad input ----------------------------------------------------


async def test_only_an_admin_changes_controls(stack):
    wallet, vendor = await stack.funded_wallet(0), await stack.vendor()
    _, auditor = await stack.principal("auditor")
    own_limit = await _patch(stack, wallet.account_id, {"min_balance": -1000}, token=wallet.token)
    assert (own_limit.status, own_limit.code) == (403, "forbidden")
    await _changed(stack, vendor.account_id, status="frozen")
    unfreeze = await _patch(stack, vendor.account_id, {"status": "active"}, token=vendor.token)
    assert (unfreeze.status, unfreeze.code) == (403, "forbidden")
    assert (await _patch(stack, wallet.account_id, {"status": "frozen"}, token=auditor)).status == 403
    assert (await _account(stack, vendor.account_id))["status"] == "frozen"
    missing = await _patch(stack, str(uuid.uuid4()), {"status": "frozen"})
    assert (missing.status, missing.code) == (404, "not_found")


@pytest.mark.parametrize("body, path", [
    ({"min_balance": 1}, "$.min_balance"),
    ({"max_balance": -1}, "$.max_balance"),
    ({"status": "suspended"}, "$.status"),
    ({"min_balance": -1.5}, "$.min_balance"),
    ({"max_balance": "10"}, "$.max_balance"),
    ({"min_balance": None}, "$.min_balance"),  # a wallet is never unbounded below
    ({"colour": "red"}, "$"),
])
async def test_bad_controls_are_400_and_change_nothing(stack, body, path):
    wallet = await stack.funded_wallet(0)
    reply = await _patch(stack, wallet.account_id, body)
    assert (reply.status, reply.code) == (400, "validation_error"), reply.text
    assert reply.body["errors"][0]["path"] == path
    assert await _account_entries(stack, wallet.account_id) == []


async def test_an_integral_number_is_an_integer_limit(stack):
    wallet = await stack.funded_wallet(0)
    assert (await _changed(stack, wallet.account_id, max_balance=584.0))["max_balance"] == 584


# ---- a freeze racing payments ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_freeze_racing_payments_lands_at_one_position(stack):
    """50 payments from one wallet race a freeze of it: every payment committed before the freeze's
    position, every later one refused `account_frozen`, none from the wallet after it in the journal."""
    wallet, vendor = await stack.funded_wallet(10 * PAYMENTS_RACING), await stack.vendor()
    start = (await _account(stack, wallet.account_id))["position"]

    async def pay():
        return await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10)

    async def paying() -> bool:
        return await stack.balance(wallet.account_id) < 10 * PAYMENTS_RACING

    # A first wave is under way before the freeze is sent amid the rest, so that it lands among them.
    first, middle = PAYMENTS_RACING // 5, PAYMENTS_RACING * 3 // 5
    tasks = [asyncio.create_task(pay()) for _ in range(first)]
    await eventually(paying, what="a first payment")
    tasks += [asyncio.create_task(pay()) for _ in range(middle - first)]
    tasks.append(asyncio.create_task(_patch(stack, wallet.account_id, {"status": "frozen"})))
    tasks += [asyncio.create_task(pay()) for _ in range(PAYMENTS_RACING - middle)]
    replies = await asyncio.gather(*tasks)
    freeze_reply, payments = replies[middle], replies[:middle] + replies[middle + 1:]
    assert freeze_reply.status == 200, freeze_reply.text
    (freeze,) = await _account_entries(stack, wallet.account_id, start)
    committed = [r.body["position"] for r in payments if r.status == 201]
    refused = [r.code for r in payments if r.status != 201]
    assert committed and all(position < freeze.position for position in committed), (freeze.position, committed)
    assert refused == ["account_frozen"] * len(refused)
    after = [e for e in await _journal(stack, freeze.position)
             if any(str(p.account_id) == wallet.account_id and p.amount < 0 for p in e.postings)]
    assert after == []
    print(f"\nfreeze at position {freeze.position}: {len(committed)} payments committed before it"
          f" (positions {min(committed, default=None)}..{max(committed, default=None)}),"
          f" {len(refused)} refused account_frozen after it")
    assert await stack.balance(wallet.account_id) == 10 * (PAYMENTS_RACING - len(committed))
    report = await audit.run_audit(stack.database_url)
    assert report.ok, report.first_failure
    print(json.dumps({"audit_ok": report.ok, "entries": report.entries}))
