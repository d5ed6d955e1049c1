"""The client's search: statements, vendor lists and the journal-wide list, found by metadata, kind
and time, through the async face and the blocking one, page by page."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from client import LedgerClient, SyncLedgerClient


async def _paid_orders(stack, count: int):
    """A wallet that paid a vendor `count` times, order i carrying `{order_id: "<run>-i"}`."""
    wallet, vendor, run = await stack.funded_wallet(1000), await stack.vendor(), uuid.uuid4().hex
    paid = []
    for n in range(count):
        reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1 + n,
                                     metadata={"order_id": f"{run}-{n}", "run": run})
        assert reply.status == 201, reply.text
        paid.append(reply.body)
    return wallet, vendor, run, paid


async def test_the_async_client_finds_a_payment_by_its_order_id_on_every_list(stack):
    wallet, vendor, run, paid = await _paid_orders(stack, 3)
    order = {"order_id": f"{run}-1"}
    async with LedgerClient(stack.client.base, token=stack.admin) as admin:
        await admin.as_principal(vendor.token).verification(
            uuid.UUID(vendor.account_id), uuid.UUID(paid[-1]["id"]), min_position=paid[-1]["position"], wait_ms=5000)
        statement = [i async for page in admin.as_principal(wallet.token).statement(
            uuid.UUID(wallet.account_id), metadata=order, kind="transfer") for i in page.items]
        listed = [i async for page in admin.as_principal(vendor.token).vendor_transfers(
            uuid.UUID(vendor.account_id), metadata=order) for i in page.items]
        found = [i async for page in admin.transfers(metadata=order, since=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
                 for i in page.items]
    assert [str(i.transfer_id) for i in statement] == [paid[1]["id"]]
    assert [str(i.transfer_id) for i in listed] == [paid[1]["id"]]
    assert [str(i.id) for i in found] == [paid[1]["id"]] and found[0].metadata == {**order, "run": run}


def _search_page_by_page(base_url: str, admin_token: str, run: str, account_id: str) -> list[list[str]]:
    with SyncLedgerClient(base_url, token=admin_token) as admin:
        return [[str(t.id) for t in page.items]
                for page in admin.transfers(limit=2, account_id=uuid.UUID(account_id), metadata={"run": run})]


async def test_the_blocking_client_pages_through_a_search(stack):
    wallet, _, run, paid = await _paid_orders(stack, 3)
    pages = await asyncio.to_thread(_search_page_by_page, stack.client.base, stack.admin, run, wallet.account_id)
    assert pages == [[paid[0]["id"], paid[1]["id"]], [paid[2]["id"]]]
