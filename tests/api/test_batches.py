"""`POST /v1/batches` against the real stack: each item answered exactly as its single route, keys
shared with the Idempotency-Key header, bad shapes refused whole, and atomic batches all or nothing
(money conserved when they race single requests)."""

from __future__ import annotations

import asyncio
import json
import uuid

import audit
from api.ratelimit import RateLimiter

FUNDS = 1000


def _key() -> str:
    return str(uuid.uuid4())


def _transfer(source: str, target: str, amount: int, **extra) -> dict:
    return {"type": "transfer", "idempotency_key": _key(), "from_account_id": source, "to_account_id": target,
            "amount": amount, "currency": "USD", **extra}


async def _batch(stack, token: str, items: list[dict], mode: str = "independent"):
    return await stack.client.post("/v1/batches", token=token, json={"mode": mode, "items": items})


async def _head(stack) -> dict:
    reply = await stack.client.get("/v1/journal/head", token=stack.admin)
    assert reply.status == 200, reply.text
    return reply.body


async def _single(stack, token: str, item: dict):
    """The item sent to its single route, with its key as the Idempotency-Key header."""
    body = {k: v for k, v in item.items() if k not in ("type", "idempotency_key", "transfer_id", "hold_id")}
    kind, key = item["type"], item["idempotency_key"]
    path = {
        "transfer": "/v1/transfers", "hold": "/v1/holds",
        "refund": f"/v1/transfers/{item.get('transfer_id')}/refunds",
        "capture": f"/v1/holds/{item.get('hold_id')}/capture", "void": f"/v1/holds/{item.get('hold_id')}/void",
    }[kind]
    return await stack.client.post(path, token=token, json=body if kind != "void" else None, key=key)


async def _world(stack):
    """A funded wallet, a vendor paid once (to refund) and two pending holds (to capture, to void)."""
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 300)
    assert paid.status == 201, paid.text
    holds = []
    for _ in range(2):
        placed = await _single(stack, wallet.token, {"type": "hold", "idempotency_key": _key(),
                                                     "from_account_id": wallet.account_id,
                                                     "to_account_id": vendor.account_id, "amount": 100,
                                                     "currency": "USD"})
        assert placed.status == 201, placed.text
        holds.append(placed.body["id"])
    return wallet, vendor, paid.body, holds


def _all_kinds(wallet, vendor, paid: dict, holds: list[str]) -> list[dict]:
    return [
        _transfer(wallet.account_id, vendor.account_id, 50, reference="r1", metadata={"a": "b"}),
        {"type": "refund", "idempotency_key": _key(), "transfer_id": paid["id"], "amount": 20},
        {"type": "hold", "idempotency_key": _key(), "from_account_id": wallet.account_id,
         "to_account_id": vendor.account_id, "amount": 30, "currency": "USD", "expires_in_s": 60},
        {"type": "capture", "idempotency_key": _key(), "hold_id": holds[0], "amount": 40},
        {"type": "void", "idempotency_key": _key(), "hold_id": holds[1]},
        _transfer(wallet.account_id, vendor.account_id, 10**9),  # over the balance
        _transfer(wallet.account_id, wallet.account_id, 1),  # same account
    ]


async def test_each_item_is_answered_exactly_as_its_single_route_answers_the_same_key(stack):
    wallet, vendor, paid, holds = await _world(stack)
    items = _all_kinds(wallet, vendor, paid, holds)
    reply = await _batch(stack, stack.admin, items)
    assert reply.status == 200, reply.text
    assert reply.body["mode"] == "independent"
    answers = reply.body["items"]
    assert [a["index"] for a in answers] == list(range(len(items)))
    assert [a["status"] for a in answers] == [201, 201, 201, 201, 201, 422, 422]
    assert [a["body"].get("code") for a in answers[5:]] == ["insufficient_funds", "same_account"]
    assert not any(a["replayed"] for a in answers)
    # The single routes with the same keys replay what the batch committed, body for body, and
    # refuse what it refused with the same problem.
    for item, answer in zip(items, answers, strict=True):
        single = await _single(stack, stack.admin, item)
        assert (single.status, single.body) == (answer["status"], answer["body"]), item["type"]
        assert single.headers.get("Idempotency-Replayed") == ("true" if single.status == 201 else None)
    assert answers[3]["body"]["status"] == "captured" and answers[4]["body"]["status"] == "voided"
    assert answers[2]["body"]["status"] == "pending" and answers[1]["body"]["refund_of"] == paid["id"]


async def test_an_item_replays_a_single_request_made_with_its_key(stack):
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    item = _transfer(wallet.account_id, vendor.account_id, 70)
    single = await _single(stack, wallet.token, item)
    assert single.status == 201, single.text
    reply = await _batch(stack, wallet.token, [item])
    assert reply.body["items"] == [{"index": 0, "status": 201, "body": single.body, "replayed": True}]
    reused = await _batch(stack, wallet.token, [{**item, "amount": 71}])
    assert (reused.body["items"][0]["status"], reused.body["items"][0]["body"]["code"]) == (409, "idempotency_key_reused")
    assert await stack.balance(wallet.account_id) == FUNDS - 70


async def test_a_whole_batch_sent_again_replays_every_answer(stack):
    wallet, vendor, paid, holds = await _world(stack)
    items = _all_kinds(wallet, vendor, paid, holds)
    for mode in ("independent", "atomic"):
        batch = items[:5] if mode == "independent" else [_transfer(wallet.account_id, vendor.account_id, 5) for _ in range(3)]
        first = await _batch(stack, wallet.token if mode == "atomic" else stack.admin, batch, mode)
        again = await _batch(stack, wallet.token if mode == "atomic" else stack.admin, batch, mode)
        assert first.status == again.status == 200, first.text
        assert all(a["status"] == 201 and not a["replayed"] for a in first.body["items"]), first.text
        assert [a["body"] for a in again.body["items"]] == [a["body"] for a in first.body["items"]]
        assert all(a["replayed"] for a in again.body["items"])


async def test_two_items_with_one_key_refuse_the_whole_batch(stack):
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    items = [_transfer(wallet.account_id, vendor.account_id, 1) for _ in range(3)]
    items[2]["idempotency_key"] = items[0]["idempotency_key"]
    head = await _head(stack)
    reply = await _batch(stack, wallet.token, items)
    assert (reply.status, reply.code) == (400, "validation_error"), reply.text
    assert reply.body["errors"][0]["path"] == "$.items[2].idempotency_key"
    assert await _head(stack) == head and await stack.balance(wallet.account_id) == FUNDS


async def test_items_past_the_cap_are_refused_and_the_cap_itself_commits(stack):
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    items = [_transfer(wallet.account_id, vendor.account_id, 1) for _ in range(stack.settings.api.batch_items_max + 1)]
    head = await _head(stack)
    reply = await _batch(stack, wallet.token, items)
    assert (reply.status, reply.code) == (400, "validation_error"), reply.text
    assert reply.body["errors"][0]["path"] == "$.items"
    assert await _head(stack) == head
    # 1000 items (over 64 KiB, past the committer's batch_max): every one commits, in item order.
    reply = await _batch(stack, wallet.token, items[:-1])
    assert reply.status == 200, reply.text
    positions = [a["body"]["position"] for a in reply.body["items"]]
    assert all(a["status"] == 201 for a in reply.body["items"]) and positions == sorted(positions)
    assert await stack.balance(wallet.account_id) == 0


async def test_an_item_of_an_unknown_type_or_a_bad_field_names_its_path(stack):
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    good = _transfer(wallet.account_id, vendor.account_id, 1)
    head = await _head(stack)
    cases = [
        ({**_transfer(wallet.account_id, vendor.account_id, 1), "type": "payout"}, "$.items[1].type"),
        (_transfer(wallet.account_id, vendor.account_id, "1"), "$.items[1].amount"),
        ({**_transfer(wallet.account_id, vendor.account_id, 1), "idempotency_key": "a\n"}, "$.items[1].idempotency_key"),
    ]
    for bad, path in cases:
        for mode in ("independent", "atomic"):
            reply = await _batch(stack, wallet.token, [good, bad], mode)
            assert (reply.status, reply.code) == (400, "validation_error"), reply.text
            assert reply.body["errors"][0]["path"] == path
    assert await _head(stack) == head


async def test_roles_and_ownership_are_checked_per_item(stack):
    wallet, vendor, paid, holds = await _world(stack)
    other = await stack.funded_wallet(FUNDS)
    items = [
        _transfer(wallet.account_id, vendor.account_id, 10),  # its own wallet: 201
        _transfer(other.account_id, vendor.account_id, 10),  # another client's wallet: 403
        {"type": "refund", "idempotency_key": _key(), "transfer_id": paid["id"], "amount": 1},  # a vendor's: 403
        {"type": "capture", "idempotency_key": _key(), "hold_id": holds[0]},  # the payee's (the vendor's): 403
        {"type": "void", "idempotency_key": _key(), "hold_id": holds[1]},  # either party's: 201
        {"type": "void", "idempotency_key": _key(), "hold_id": str(uuid.uuid4())},  # no such hold: 403
    ]
    reply = await _batch(stack, wallet.token, items)
    assert [(a["status"], a["body"].get("code")) for a in reply.body["items"]] == [
        (201, None), (403, "forbidden"), (403, "forbidden"), (403, "forbidden"), (201, None), (403, "forbidden"),
    ]
    assert await stack.balance(other.account_id) == FUNDS
    # An auditor never writes: the whole request is refused.
    _, auditor = await stack.principal("auditor")
    refused = await _batch(stack, auditor, items[:1])
    assert (refused.status, refused.code) == (403, "forbidden")
    # In atomic mode the first refused item keeps its answer and nothing is written.
    before = await stack.balance(wallet.account_id)
    atomic = await _batch(stack, wallet.token, [_transfer(wallet.account_id, vendor.account_id, 5), items[1]], "atomic")
    assert [(a["status"], a["body"]["code"]) for a in atomic.body["items"]] == [(424, "batch_aborted"), (403, "forbidden")]
    assert await stack.balance(wallet.account_id) == before


async def test_a_body_over_4_mib_is_413(stack):
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    item = _transfer(wallet.account_id, vendor.account_id, 1, reference="x" * 128)
    items = [{**item, "idempotency_key": f"{n:0>200}"} for n in range(10_000)]
    body = json.dumps({"mode": "independent", "items": items}).encode()
    assert len(body) > 5 * 1024 * 1024
    reply = await stack.client.post("/v1/batches", token=wallet.token, data=body,
                                    headers={"Content-Type": "application/json"})
    assert (reply.status, reply.code) == (413, "body_too_large"), reply.text[:300]


async def test_an_atomic_batch_with_one_item_over_the_balance_writes_nothing(stack):
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    items = [_transfer(wallet.account_id, vendor.account_id, 400) for _ in range(3)]  # the third passes 1000
    head = await _head(stack)
    reply = await _batch(stack, wallet.token, items, "atomic")
    assert reply.status == 200, reply.text
    assert [(a["status"], a["body"]["code"]) for a in reply.body["items"]] == [
        (424, "batch_aborted"), (424, "batch_aborted"), (422, "insufficient_funds"),
    ]
    assert await _head(stack) == head
    assert (await stack.balance(wallet.account_id), await stack.balance(vendor.account_id)) == (FUNDS, 0)
    # Without the failing item it commits whole, at consecutive positions.
    reply = await _batch(stack, wallet.token, [dict(item, idempotency_key=_key()) for item in items[:2]], "atomic")
    positions = [a["body"]["position"] for a in reply.body["items"]]
    assert positions[1] == positions[0] + 1 and await stack.balance(vendor.account_id) == 800


async def test_atomic_items_are_consecutive_among_concurrent_single_requests(stack):
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    others = [await stack.funded_wallet(10) for _ in range(20)]
    singles = [stack.transfer(o.token, o.account_id, vendor.account_id, 1) for o in others]
    batch = _batch(stack, wallet.token, [_transfer(wallet.account_id, vendor.account_id, 1) for _ in range(40)], "atomic")
    reply, *single_replies = await asyncio.gather(batch, *singles)
    assert all(r.status == 201 for r in single_replies)
    positions = [a["body"]["position"] for a in reply.body["items"]]
    assert positions == list(range(positions[0], positions[0] + 40))


async def test_an_atomic_batch_racing_a_single_request_for_the_same_money_conserves_it(stack):
    for _ in range(5):
        wallet, first, second = await stack.funded_wallet(FUNDS), await stack.vendor(), await stack.vendor()
        items = [_transfer(wallet.account_id, first.account_id, 600),
                 _transfer(wallet.account_id, second.account_id, 300)]
        batch, single = await asyncio.gather(
            _batch(stack, wallet.token, items, "atomic"),
            stack.transfer(wallet.token, wallet.account_id, first.account_id, 600),
        )
        statuses = [a["status"] for a in batch.body["items"]]
        balances = [await stack.balance(a) for a in (wallet.account_id, first.account_id, second.account_id)]
        if single.status == 201:  # the single request won: the batch wrote nothing
            assert sorted(statuses) == [422, 424] and balances == [400, 600, 0]
        else:
            assert (single.code, statuses) == ("insufficient_funds", [201, 201]) and balances == [100, 600, 300]
        assert sum(balances) == FUNDS


async def test_batch_items_are_ordinary_entries_downstream(stack):
    """The projection verifies an item's payment like any other, and the audit holds."""
    wallet, vendor = await stack.funded_wallet(FUNDS), await stack.vendor()
    reply = await _batch(stack, wallet.token, [_transfer(wallet.account_id, vendor.account_id, n) for n in (3, 4)],
                         "atomic")
    paid = reply.body["items"][1]["body"]
    verification = await stack.client.get(
        f"/v1/vendors/{vendor.account_id}/transfers/{paid['id']}/verification", token=vendor.token,
        params={"min_position": paid["position"], "wait_ms": 5000})
    assert verification.status == 200, verification.text
    assert (verification.body["amount"], verification.body["position"]) == (4, paid["position"])
    report = await audit.run_audit(stack.database_url)
    failed = [c for c in report.checks if not c.ok and c.name not in ("projection", "verifications")]
    assert not failed, failed


def test_a_batch_costs_its_items_and_one_past_the_burst_leaves_the_bucket_in_debt():
    now = [0.0]
    limiter = RateLimiter(rate_per_s=100, burst=50, clock=lambda: now[0])
    assert limiter.take("p", 30) == 0  # 20 left
    assert limiter.take("p", 30) > 0  # not enough: refused, nothing spent
    now[0] += 0.5  # +50, capped at the burst
    assert limiter.take("p", 80) == 0  # a batch past the burst passes on a full bucket: -30
    assert limiter.take("p") == (1 + 30) / 100  # and the next request waits until the debt is paid
