"""Bad input's tools: a funded payer per test module, the check that a reply is the contract's
problem (RFC 9457, exact status and code, the offending place), and the check that a block writes
nothing (balances and the journal head unchanged). Used by every feature's test_bad_input.py."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import pytest_asyncio

BALANCE = 1000
AMOUNT_MAX = 2**53 - 1
BODY_BYTES_MAX = 64 * 1024
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}
ABSENT = str(uuid.UUID(int=7))


@dataclasses.dataclass
class Payer:
    token: str
    wallet: str
    vendor: str
    vendor_token: str


@pytest_asyncio.fixture(scope="module")
async def payer(stack) -> Payer:
    wallet = await stack.funded_wallet(BALANCE)
    vendor = await stack.vendor()
    return Payer(wallet.token, wallet.account_id, vendor.account_id, vendor.token)


def assert_problem(reply, status: int, code: str, path: str | None = None) -> None:
    """The reply is the problem the contract names; `path`: the first validation error's place."""
    assert (reply.status, reply.code) == (status, code), reply.text
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert PROBLEM_FIELDS <= set(reply.body) and reply.body["status"] == status
    assert reply.body["type"].endswith("/" + code) and reply.body["title"] and reply.body["detail"]
    if path is not None:
        assert reply.body["errors"][0]["path"] == path, reply.text
        assert reply.body["errors"][0]["message"]


async def _state(stack, payer: Payer) -> tuple[int, int, int]:
    head = await stack.client.get("/v1/journal/head", token=stack.admin)
    return await stack.balance(payer.wallet), await stack.balance(payer.vendor), head.body["position"]


class NothingWritten:
    """`async with NothingWritten(stack, payer):` — the block leaves balances and journal alone."""

    def __init__(self, stack, payer: Payer) -> None:
        self.stack, self.payer = stack, payer

    async def __aenter__(self):
        self.before = await _state(self.stack, self.payer)

    async def __aexit__(self, *exc) -> None:
        if exc[0] is None:
            assert await _state(self.stack, self.payer) == self.before


def good(payer: Payer, **changes) -> dict[str, Any]:
    body = {"from_account_id": payer.wallet, "to_account_id": payer.vendor, "amount": 5, "currency": "USD"}
    body.update(changes)
    return body


def raw(payer: Payer, **changes) -> bytes:
    return json.dumps(good(payer, **changes)).encode()


async def post_transfer(stack, payer: Payer, *, token: str | None = None, key: str | None = "k", **kw):
    if key is not None:
        kw.setdefault("headers", {})["Idempotency-Key"] = key if key != "k" else str(uuid.uuid4())
    return await stack.client.post("/v1/transfers", token=token or payer.token, **kw)
