"""Bad input to refunds and holds: every invalid body, key or id is its exact 4xx problem with its
place and writes nothing (the payer's balance and the journal head are the same after it); an
amount past what is refundable or held is its 422 (tests/api/test_bad_input.py for transfers)."""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from tests.plugins.problems import ABSENT, AMOUNT_MAX, NothingWritten, assert_problem, good, post_transfer


# ---- refunds --------------------------------------------------------------------------------

@pytest_asyncio.fixture(scope="module")
async def paid(stack, payer) -> dict:
    reply = await post_transfer(stack, payer, json=good(payer, amount=10), key=str(uuid.uuid4()))
    assert reply.status == 201, reply.text
    return reply.body


BAD_REFUNDS = {
    "amount zero": ({"amount": 0}, "$.amount"),
    "amount negative": ({"amount": -1}, "$.amount"),
    "amount a string": ({"amount": "5"}, "$.amount"),
    "amount with a fraction": ({"amount": 1.5}, "$.amount"),
    "amount past 2^53-1": ({"amount": AMOUNT_MAX + 1}, "$.amount"),
    "amount missing": ({"reference": "x"}, "$"),
    "reference too long": ({"amount": 1, "reference": "r" * 129}, "$.reference"),
    "metadata not strings": ({"amount": 1, "metadata": {"a": 1}}, "$.metadata[...]"),
    "currency is not the refund's to choose": ({"amount": 1, "currency": "USD"}, "$"),
}


@pytest.mark.parametrize("name", list(BAD_REFUNDS))
async def test_an_invalid_refund_body_is_400_and_writes_nothing(stack, payer, paid, name):
    body, path = BAD_REFUNDS[name]
    async with NothingWritten(stack, payer):
        reply = await stack.client.post(f"/v1/transfers/{paid['id']}/refunds", token=payer.vendor_token, json=body,
                                        key=str(uuid.uuid4()))
    assert_problem(reply, 400, "validation_error", path)


async def test_a_refund_without_idempotency_key_is_400(stack, payer, paid):
    async with NothingWritten(stack, payer):
        reply = await stack.client.post(f"/v1/transfers/{paid['id']}/refunds", token=payer.vendor_token,
                                        json={"amount": 1})
    assert_problem(reply, 400, "idempotency_key_required")


async def test_a_refund_of_a_bad_transfer_id_is_400(stack, payer):
    reply = await stack.client.post("/v1/transfers/nope/refunds", token=payer.vendor_token, json={"amount": 1},
                                    key="k")
    assert_problem(reply, 400, "validation_error", "$.path.transfer_id")


async def test_a_client_refunding_with_a_bad_body_is_400_shape_before_role(stack, payer, paid):
    reply = await stack.client.post(f"/v1/transfers/{paid['id']}/refunds", token=payer.token, json={"amount": 0},
                                    key="k")
    assert_problem(reply, 400, "validation_error", "$.amount")
    reply = await stack.client.post(f"/v1/transfers/{paid['id']}/refunds", token=payer.token, json={"amount": 1},
                                    key="k")
    assert_problem(reply, 403, "forbidden")


async def test_a_refund_beyond_the_payment_is_422_and_writes_nothing(stack, payer, paid):
    async with NothingWritten(stack, payer):
        reply = await stack.client.post(f"/v1/transfers/{paid['id']}/refunds", token=payer.vendor_token,
                                        json={"amount": paid["amount"] + 1}, key=str(uuid.uuid4()))
    assert_problem(reply, 422, "refund_exceeds_transfer")


# ---- holds ----------------------------------------------------------------------------------

@pytest_asyncio.fixture(scope="module")
async def held(stack, payer) -> dict:
    reply = await stack.client.post("/v1/holds", token=payer.token, json=good(payer, amount=10), key=str(uuid.uuid4()))
    assert reply.status == 201, reply.text
    return reply.body


BAD_HOLDS = {
    "amount zero": (good, {"amount": 0}, "$.amount"),
    "amount past 2^53-1": (good, {"amount": AMOUNT_MAX + 1}, "$.amount"),
    "currency lower case": (good, {"currency": "usd"}, "$.currency"),
    "expires_in_s zero": (good, {"expires_in_s": 0}, "$.expires_in_s"),
    "expires_in_s past a week": (good, {"expires_in_s": 604_801}, "$.expires_in_s"),
    "expires_in_s a string": (good, {"expires_in_s": "60"}, "$.expires_in_s"),
    "reference too long": (good, {"reference": "r" * 129}, "$.reference"),
    "unknown field": (good, {"hold_id": ABSENT}, "$"),
}


@pytest.mark.parametrize("name", list(BAD_HOLDS))
async def test_an_invalid_hold_body_is_400_and_writes_nothing(stack, payer, name):
    make, changes, path = BAD_HOLDS[name]
    async with NothingWritten(stack, payer):
        reply = await stack.client.post("/v1/holds", token=payer.token, json=make(payer, **changes),
                                        key=str(uuid.uuid4()))
    assert_problem(reply, 400, "validation_error", path)


async def test_a_hold_at_the_limits_of_expires_in_s_is_accepted(stack, payer):
    for seconds in (1, 604_800):
        reply = await stack.client.post("/v1/holds", token=payer.token, json=good(payer, amount=1, expires_in_s=seconds),
                                        key=str(uuid.uuid4()))
        assert reply.status == 201, reply.text


BAD_CAPTURES = {
    "amount zero": ({"amount": 0}, "$.amount"),
    "amount negative": ({"amount": -1}, "$.amount"),
    "amount with a fraction": ({"amount": 1.5}, "$.amount"),
    "unknown field": ({"amount": 1, "currency": "USD"}, "$"),
}


@pytest.mark.parametrize("name", list(BAD_CAPTURES))
async def test_an_invalid_capture_body_is_400_and_writes_nothing(stack, payer, held, name):
    body, path = BAD_CAPTURES[name]
    async with NothingWritten(stack, payer):
        reply = await stack.client.post(f"/v1/holds/{held['id']}/capture", token=payer.vendor_token, json=body,
                                        key=str(uuid.uuid4()))
    assert_problem(reply, 400, "validation_error", path)


@pytest.mark.parametrize("step", ["capture", "void"])
async def test_a_hold_step_without_idempotency_key_is_400(stack, payer, held, step):
    async with NothingWritten(stack, payer):
        reply = await stack.client.post(f"/v1/holds/{held['id']}/{step}", token=payer.vendor_token, json={})
    assert_problem(reply, 400, "idempotency_key_required")


@pytest.mark.parametrize("path", ["/v1/holds/nope/capture", "/v1/holds/nope/void"])
async def test_a_hold_step_on_a_bad_hold_id_is_400(stack, payer, path):
    reply = await stack.client.post(path, token=payer.vendor_token, json={}, key="k")
    assert_problem(reply, 400, "validation_error", "$.path.hold_id")


async def test_reading_a_bad_hold_id_is_400(stack):
    assert_problem(await stack.client.get("/v1/holds/nope", token=stack.admin), 400, "validation_error",
                   "$.path.hold_id")


async def test_a_capture_beyond_the_hold_is_422_and_writes_nothing(stack, payer, held):
    async with NothingWritten(stack, payer):
        reply = await stack.client.post(f"/v1/holds/{held['id']}/capture", token=payer.vendor_token,
                                        json={"amount": held["amount"] + 1}, key=str(uuid.uuid4()))
    assert_problem(reply, 422, "capture_exceeds_hold")


async def test_an_auditor_placing_a_hold_is_403(stack, payer):
    _, auditor = await stack.principal("auditor")
    reply = await stack.client.post("/v1/holds", token=auditor, json=good(payer), key="k")
    assert_problem(reply, 403, "forbidden")
