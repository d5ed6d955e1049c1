"""Account controls and search through the console, without a browser: the admin's controls form,
the client's pay form meeting a frozen wallet, and finding a payment by its order id."""

from __future__ import annotations

import re
import uuid

from tests.plugins.helpers import eventually

FROZEN_WORDS = "frozen: it cannot pay or hold money until an admin unfreezes it"


async def _pay(browser, wallet, vendor, amount: int, **extra) -> tuple[int, str]:
    csrf = await browser.csrf("/wallets")
    status, _, page = await browser.post("/pay", {
        "csrf": csrf, "idempotency_key": str(uuid.uuid4()), "from_account_id": wallet.account_id,
        "to_account_id": vendor.account_id, "amount": str(amount), "reference": "", **extra})
    return status, page


async def _set_controls(admin, account_id: str, **fields) -> tuple[int, str]:
    csrf = await admin.csrf(f"/admin/accounts/{account_id}")
    status, headers, page = await admin.post(f"/admin/accounts/{account_id}/controls", {"csrf": csrf, **fields})
    return status, page


async def test_an_admin_freezes_a_wallet_its_pay_form_says_so_and_after_unfreezing_it_pays(console):
    stack = console.stack
    wallet, vendor = await stack.funded_wallet(1_000), await stack.vendor()
    async with console.session() as admin, console.session() as client:
        await admin.sign_in(stack.admin)
        await client.sign_in(wallet.token)
        assert await _set_controls(admin, wallet.account_id, status="frozen", credit_line="", cap="") == (303, "")
        _, _, page = await admin.get(f"/admin/accounts/{wallet.account_id}")
        assert '<dd class="frozen">frozen</dd>' in page
        _, _, wallets = await client.get("/wallets")
        assert FROZEN_WORDS in wallets
        status, page = await _pay(client, wallet, vendor, 100)
        assert status == 422 and FROZEN_WORDS in page and '"code"' not in page
        assert await _set_controls(admin, wallet.account_id, status="active", credit_line="", cap="") == (303, "")
        status, page = await _pay(client, wallet, vendor, 100)
        assert status == 201, page
    assert await stack.balance(wallet.account_id) == 900


async def test_limits_are_set_and_shown_closing_a_funded_wallet_is_refused_in_words_and_csrf_is_required(console):
    stack = console.stack
    wallet = await stack.funded_wallet(50)
    async with console.session() as admin, console.session() as client:
        await admin.sign_in(stack.admin)
        await client.sign_in(wallet.token)
        assert (await _set_controls(admin, wallet.account_id, status="active", credit_line="200", cap="5000"))[0] == 303
        account = (await stack.client.get(f"/v1/accounts/{wallet.account_id}", token=stack.admin)).body
        assert (account["min_balance"], account["max_balance"]) == (-200, 5_000)
        _, _, wallets = await client.get("/wallets")
        assert "credit line" in wallets and "200" in wallets and "cap" in wallets and "5,000" in wallets
        status, page = await _set_controls(admin, wallet.account_id, status="closed", credit_line="200", cap="5000")
        assert status == 422 and "still holds money or has pending holds" in page and '"code"' not in page
        status, _, page = await admin.post(f"/admin/accounts/{wallet.account_id}/controls", {"status": "frozen"})
        assert status == 403 and "expired or did not come from this console" in page
    account = (await stack.client.get(f"/v1/accounts/{wallet.account_id}", token=stack.admin)).body
    assert account["status"] == "active"


async def test_an_account_created_in_the_console_gets_its_limits(console):
    stack = console.stack
    owner, owner_token = await stack.principal("client")
    async with console.session() as admin:
        await admin.sign_in(stack.admin)
        csrf = await admin.csrf("/admin")
        status, _, page = await admin.post("/admin/accounts", {"csrf": csrf, "kind": "wallet", "currency": "USD",
                                                               "owner_id": owner, "credit_line": "30", "cap": "90"})
        assert status == 200 and "Account created" in page and "credit line" in page
    # The owner's own list: the admin's first page of a shared stack need not reach a new account.
    accounts = (await stack.client.get("/v1/accounts", token=owner_token)).body["items"]
    assert [(a["owner_id"], a["min_balance"], a["max_balance"]) for a in accounts] == [(owner, -30, 90)]


async def test_search_finds_a_payment_by_its_order_id(console):
    stack = console.stack
    wallet, vendor = await stack.funded_wallet(1_000), await stack.vendor()
    order = f"A-{uuid.uuid4().hex[:8]}"
    _, auditor = await stack.principal("auditor")
    async with console.session() as client, console.session() as seller, console.session() as reader:
        await client.sign_in(wallet.token)
        assert (await _pay(client, wallet, vendor, 70, reference="the one", order_id=order))[0] == 201
        assert (await _pay(client, wallet, vendor, 30, reference="another", order_id="B-1"))[0] == 201
        await seller.sign_in(vendor.token)
        await reader.sign_in(auditor)
        for who, path in ((client, f"/wallets/{wallet.account_id}/statement?order_id={order}"),
                          (seller, f"/vendor?account={vendor.account_id}&order_id={order}"),
                          (reader, f"/search?order_id={order}")):
            page = await _eventually_listed(who, path, "the one")
            assert "another" not in page and "data-live-url" not in page, path
        payment = re.search(r'href="/console(/payments/[0-9a-f-]{36})"', page).group(1)
        status, _, page = await reader.get(payment)
        assert status == 200 and order in page, page
        status, _, page = await reader.get("/search?key=order_id&value=B-1&from=2000-01-01&to=2999-12-31")
        assert status == 200 and "another" in page and "the one" not in page
        status, _, page = await seller.get(f"/vendor?account={vendor.account_id}&from=yesterday")
        assert status == 400 and "Some field is not valid" in page


async def _eventually_listed(browser, path: str, text: str) -> str:
    """The vendor's list is the projection's, a moment behind the journal."""
    async def listed():
        status, _, page = await browser.get(path)
        assert status == 200, page
        return page if text in page else None

    return await eventually(listed, what=f"{text!r} listed at {path}")
