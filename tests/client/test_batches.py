"""The client's `batch` and `batches`: typed answers against the live stack, the blocking face, and
retries (against a scripted server on the loopback) that send the same keys again."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiohttp import web

import schemas
from client import LedgerClient, SyncLedgerClient
from client.batches import chunks
from schemas.batches import BatchAnswer, BatchItemAnswer, HoldItem, TransferItem, VoidItem

LOOPBACK = "127.0.0.1"


def _pay(source: str, target: str, amount: int, key: str | None = None) -> TransferItem:
    return TransferItem(from_account_id=uuid.UUID(source), to_account_id=uuid.UUID(target), amount=amount,
                        currency="USD", idempotency_key=key or str(uuid.uuid4()))


async def test_batch_answers_are_typed_as_the_single_routes_answers(stack):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    hold_key = str(uuid.uuid4())
    items = [
        _pay(wallet.account_id, vendor.account_id, 100),
        HoldItem(from_account_id=uuid.UUID(wallet.account_id), to_account_id=uuid.UUID(vendor.account_id),
                 amount=50, currency="USD", idempotency_key=hold_key),
        _pay(wallet.account_id, vendor.account_id, 10**6),
    ]
    async with LedgerClient(stack.client.base, token=wallet.token) as ledger:
        answer = await ledger.batch(items)
        assert [type(a.body) for a in answer.items] == [schemas.Transfer, schemas.Hold, schemas.Problem]
        assert answer.items[2].body.code == "insufficient_funds" and answer.items[2].status == 422
        voided = await ledger.batch([VoidItem(hold_id=answer.items[1].body.id, idempotency_key=str(uuid.uuid4()))],
                                    mode="atomic")
        assert (voided.items[0].status, voided.items[0].body.status) == (201, "voided")
        again = await ledger.batch(items)
        assert [a.replayed for a in again.items] == [True, True, False]
        assert again.items[0].body == answer.items[0].body
    assert await stack.balance(wallet.account_id) == 900


async def test_batches_split_a_long_iterable_and_count_indices_over_all_of_it(stack):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    items = (_pay(wallet.account_id, vendor.account_id, 1) for _ in range(25))  # a generator: read lazily
    async with LedgerClient(stack.client.base, token=wallet.token) as ledger:
        answers = [answer async for answer in ledger.batches(items, size=10)]
    assert [len(a.items) for a in answers] == [10, 10, 5]
    assert [item.index for a in answers for item in a.items] == list(range(25))
    assert await stack.balance(vendor.account_id) == 25
    assert [len(chunk) for chunk in chunks(range(7), 3)] == [3, 3, 1]


async def test_the_blocking_client_sends_batches_too(stack):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()

    def script() -> list[int]:
        with SyncLedgerClient(stack.client.base, token=wallet.token) as ledger:
            answer = ledger.batch([_pay(wallet.account_id, vendor.account_id, 3)], mode="atomic")
            split = ledger.batches((_pay(wallet.account_id, vendor.account_id, 1) for _ in range(3)), size=2)
            return [item.status for item in answer.items] + [len(part.items) for part in split]

    assert await asyncio.to_thread(script) == [201, 2, 1]
    assert await stack.balance(vendor.account_id) == 6


def _answer(index: int, status: int, body: dict) -> BatchItemAnswer:
    return BatchItemAnswer(index=index, status=status, body=body, replayed=False)


def _problem(code: str) -> dict:
    return {"type": "about:blank", "title": code, "status": 503, "detail": code, "code": code}


def _transfer(item: dict) -> dict:
    return {"id": str(uuid.uuid4()), "from_account_id": item["from_account_id"], "to_account_id": item["to_account_id"],
            "amount": item["amount"], "currency": "USD", "reference": "", "metadata": {}, "status": "committed",
            "position": 1, "committed_at": "2026-11-26T12:00:00.000000Z", "hash": "0" * 64}


async def test_retries_send_the_same_keys_and_items_answered_503_again_alone():
    """Attempt 1: the whole request 503. Attempt 2: the first item commits, the second is
    `queue_full`. Attempt 3 carries the second item alone, with its key, and commits it."""
    seen: list[dict] = []

    async def answer(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        seen.append(body)
        if len(seen) == 1:
            return web.json_response(_problem("unavailable"), status=503, content_type="application/problem+json")
        items = [_answer(i, 201, _transfer(item)) for i, item in enumerate(body["items"])]
        if len(seen) == 2:
            items[1] = _answer(1, 503, _problem("queue_full"))
        return web.Response(body=schemas.encode(BatchAnswer(mode=body["mode"], items=items)),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/batches", answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0).start()
    try:
        items = [_pay(str(uuid.uuid4()), str(uuid.uuid4()), n) for n in (1, 2)]
        async with LedgerClient(f"http://{LOOPBACK}:{runner.addresses[0][1]}", token="t") as ledger:
            result = await ledger.batch(items)
    finally:
        await runner.cleanup()
    keys = [[item["idempotency_key"] for item in body["items"]] for body in seen]
    assert keys == [[items[0].idempotency_key, items[1].idempotency_key]] * 2 + [[items[1].idempotency_key]]
    assert [(a.index, a.status, a.body.amount) for a in result.items] == [(0, 201, 1), (1, 201, 2)]
