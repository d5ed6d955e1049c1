"""Searching entries by metadata, kind and time (CONTRACT v3, "Searching entries by metadata"):
statements, vendor lists and `GET /v1/transfers`, against the running API and database."""

from __future__ import annotations

import dataclasses
import uuid

import pytest_asyncio

from tests.plugins.problems import assert_problem

ORDERS = 5  # payments of the shop's world, one order id each


@dataclasses.dataclass
class Shop:
    """A wallet that paid a vendor ORDERS times, each payment with its order id and a channel, then
    got one refund; `run` tells this module's metadata apart from every other test's."""

    wallet: object
    vendor: object
    run: str
    paid: list[dict]
    refund: dict


@pytest_asyncio.fixture(scope="module")
async def shop(stack) -> Shop:
    wallet, vendor, run = await stack.funded_wallet(10_000), await stack.vendor(), uuid.uuid4().hex
    paid = []
    for n in range(ORDERS):
        metadata = {"order_id": f"{run}-{n}", "channel": "web" if n % 2 == 0 else "app", "run": run}
        reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10 + n, metadata=metadata)
        assert reply.status == 201, reply.text
        paid.append(reply.body)
    refund = await stack.client.post(f"/v1/transfers/{paid[0]['id']}/refunds", token=vendor.token, json={"amount": 1},
                                     key=str(uuid.uuid4()))
    assert refund.status == 201, refund.text
    # The vendor list reads the projection: wait until it holds the last payment.
    last = paid[-1]
    await stack.client.get(f"/v1/vendors/{vendor.account_id}/transfers/{last['id']}/verification",
                           token=vendor.token, params={"min_position": last["position"], "wait_ms": 5000})
    return Shop(wallet, vendor, run, paid, refund.body)


def _statement(shop: Shop) -> str:
    return f"/v1/accounts/{shop.wallet.account_id}/entries"


def _vendor_list(shop: Shop) -> str:
    return f"/v1/vendors/{shop.vendor.account_id}/transfers"


async def _ids(stack, path: str, token: str, params: dict, *, key: str = "transfer_id") -> list[str]:
    reply = await stack.client.get(path, token=token, params=params)
    assert reply.status == 200, reply.text
    return [item[key] for item in reply.body["items"]]


async def test_a_statement_finds_a_payment_by_its_order_id(stack, shop):
    found = await _ids(stack, _statement(shop), shop.wallet.token, {"metadata.order_id": f"{shop.run}-3"})
    assert found == [shop.paid[3]["id"]]


async def test_a_vendor_finds_a_payment_by_its_order_id(stack, shop):
    found = await _ids(stack, _vendor_list(shop), shop.vendor.token, {"metadata.order_id": f"{shop.run}-2"})
    assert found == [shop.paid[2]["id"]]


async def test_an_auditor_finds_a_payment_in_the_whole_journal(stack, shop):
    _, auditor = await stack.principal("auditor")
    found = await _ids(stack, "/v1/transfers", auditor, {"metadata.order_id": f"{shop.run}-4"}, key="id")
    assert found == [shop.paid[4]["id"]]
    reply = await stack.client.get("/v1/transfers", token=auditor, params={"metadata.order_id": f"{shop.run}-4"})
    assert reply.body["items"][0]["metadata"]["order_id"] == f"{shop.run}-4" and reply.body["items"][0]["postings"]


async def test_a_value_no_entry_has_finds_nothing_on_every_route(stack, shop):
    absent = {"metadata.order_id": f"{shop.run}-absent"}
    assert await _ids(stack, _statement(shop), shop.wallet.token, absent) == []
    assert await _ids(stack, _vendor_list(shop), shop.vendor.token, absent) == []
    assert await _ids(stack, "/v1/transfers", stack.admin, absent, key="id") == []


async def test_every_metadata_filter_must_hold(stack, shop):
    both = {"metadata.run": shop.run, "metadata.channel": "app"}
    assert await _ids(stack, _statement(shop), shop.wallet.token, both) == [shop.paid[1]["id"], shop.paid[3]["id"]]
    clash = {"metadata.order_id": f"{shop.run}-1", "metadata.channel": "web"}
    assert await _ids(stack, _statement(shop), shop.wallet.token, clash) == []


async def test_filtered_pages_follow_each_other_without_gaps_or_repeats(stack, shop):
    seen, cursor = [], ""
    for _ in range(ORDERS + 1):
        reply = await stack.client.get("/v1/transfers", token=stack.admin,
                                       params={"metadata.run": shop.run, "limit": 2, "after": cursor})
        assert reply.status == 200, reply.text
        seen += [item["id"] for item in reply.body["items"]]
        cursor = reply.body["next"]
        if cursor is None:
            break
    assert seen == [p["id"] for p in shop.paid]


async def test_time_bounds_keep_the_entries_committed_between_them(stack, shop):
    first, last = shop.paid[1]["committed_at"], shop.paid[3]["committed_at"]
    run = {"metadata.run": shop.run}
    between = await _ids(stack, _statement(shop), shop.wallet.token, {**run, "from": first, "to": last})
    assert between == [p["id"] for p in shop.paid[1:4]]
    since = await _ids(stack, _vendor_list(shop), shop.vendor.token, {**run, "from": last})
    assert since == [p["id"] for p in shop.paid[3:]]
    until = await _ids(stack, "/v1/transfers", stack.admin, {**run, "to": first}, key="id")
    assert until == [p["id"] for p in shop.paid[:2]]
    assert await _ids(stack, _statement(shop), shop.wallet.token, {**run, "from": last, "to": first}) == []


async def test_kind_keeps_the_entries_of_that_kind(stack, shop):
    refunds = await _ids(stack, _statement(shop), shop.wallet.token, {"kind": "refund"})
    assert refunds == [shop.refund["id"]]
    payments = await _ids(stack, _statement(shop), shop.wallet.token, {"kind": "transfer", "metadata.run": shop.run})
    assert payments == [p["id"] for p in shop.paid]
    assert await _ids(stack, _vendor_list(shop), shop.vendor.token, {"kind": "hold"}) == []


async def test_a_statement_lists_control_changes_only_when_asked(stack, shop):
    statement = await _ids(stack, _statement(shop), shop.wallet.token, {})
    assert len(statement) == 1 + ORDERS + 1  # the funding, the payments, the refund
    assert await _ids(stack, _statement(shop), shop.wallet.token, {"kind": "account"}) == []


async def test_account_id_keeps_the_entries_of_that_account(stack, shop):
    params = {"account_id": shop.wallet.account_id, "metadata.channel": "web"}
    found = await _ids(stack, "/v1/transfers", stack.admin, params, key="id")
    assert found == [shop.paid[0]["id"], shop.paid[2]["id"], shop.paid[4]["id"]]
    other = await stack.funded_wallet(0)
    params["account_id"] = other.account_id
    assert await _ids(stack, "/v1/transfers", stack.admin, params, key="id") == []


async def test_a_vendor_searches_only_its_own_account(stack, shop):
    other = await stack.vendor()
    for path in (_statement(shop), _vendor_list(shop)):
        reply = await stack.client.get(path, token=other.token, params={"metadata.run": shop.run})
        assert_problem(reply, 403, "forbidden")
    reply = await stack.client.get(f"/v1/vendors/{other.account_id}/transfers", token=other.token,
                                   params={"metadata.run": shop.run})
    assert reply.status == 200 and reply.body["items"] == []


async def test_clients_and_vendors_may_not_search_the_whole_journal(stack, shop):
    for token in (shop.wallet.token, shop.vendor.token):
        reply = await stack.client.get("/v1/transfers", token=token, params={"metadata.run": shop.run})
        assert_problem(reply, 403, "forbidden")


async def test_a_client_with_a_fifth_filter_on_the_whole_journal_is_400_shape_before_role(stack, shop):
    params = {f"metadata.k{n}": "v" for n in range(5)}
    reply = await stack.client.get("/v1/transfers", token=shop.wallet.token, params=params)
    assert_problem(reply, 400, "validation_error", "$.query.metadata")


async def test_four_filters_are_accepted(stack, shop):
    params = {"metadata.run": shop.run, "metadata.channel": "web", "metadata.order_id": f"{shop.run}-2",
              "metadata.absent": ""}
    assert await _ids(stack, "/v1/transfers", stack.admin, params, key="id") == []
    params.pop("metadata.absent")
    assert await _ids(stack, "/v1/transfers", stack.admin, params, key="id") == [shop.paid[2]["id"]]
