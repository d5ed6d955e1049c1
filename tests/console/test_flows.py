"""Each role's other pages through the console without a browser: what they show and what they write."""

from __future__ import annotations

import json
import re
import uuid

import schemas


async def test_a_client_reads_its_statement_with_running_balances_and_places_and_voids_a_hold(console):
    stack = console.stack
    wallet, vendor = await stack.funded_wallet(1_000), await stack.vendor()
    await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 250, reference="order 7")
    async with console.session() as browser:
        await browser.sign_in(wallet.token)
        status, _, page = await browser.get(f"/wallets/{wallet.account_id}/statement")
        assert status == 200 and "order 7" in page and "-250" in page and "750" in page
        csrf = await browser.csrf("/wallets")
        status, headers, _ = await browser.post("/holds", {
            "csrf": csrf, "idempotency_key": str(uuid.uuid4()), "from_account_id": wallet.account_id,
            "to_account_id": vendor.account_id, "amount": "100", "expires_in_s": "600", "reference": "cart 1"})
        assert status == 303
        hold = headers["Location"]
        status, _, page = await browser.get(hold.removeprefix("/console"))
        assert status == 200 and "pending" in page and "Void the hold" in page
        status, _, _ = await browser.post(hold.removeprefix("/console") + "/void",
                                          {"csrf": csrf, "idempotency_key": str(uuid.uuid4())})
        assert status == 303
        status, _, page = await browser.get(hold.removeprefix("/console"))
        assert "voided" in page and "Void the hold" not in page
    assert await stack.balance(wallet.account_id) == 750


async def test_a_vendor_adds_a_webhook_sees_its_secret_once_and_deletes_it(console):
    vendor = await console.stack.vendor()
    async with console.session() as browser:
        await browser.sign_in(vendor.token)
        csrf = await browser.csrf("/vendor/webhooks")
        status, _, page = await browser.post("/vendor/webhooks", {
            "csrf": csrf, "account": vendor.account_id, "url": "http://127.0.0.1:9/hook",
            "event_transfer.received": "1"})
        assert status == 200 and "whsec_" in page and "shown once" in page
        status, _, listing = await browser.get(f"/vendor/webhooks?account={vendor.account_id}")
        assert "http://127.0.0.1:9/hook" in listing and "whsec_" not in listing
        webhook_id = re.search(r"/console/vendor/webhooks/([0-9a-f-]{36})/delete", listing).group(1)
        status, _, _ = await browser.post(f"/vendor/webhooks/{webhook_id}/delete",
                                          {"csrf": csrf, "account": vendor.account_id})
        assert status == 303
        status, _, listing = await browser.get(f"/vendor/webhooks?account={vendor.account_id}")
        assert "http://127.0.0.1:9/hook" not in listing


async def test_an_admin_creates_a_principal_whose_token_is_shown_once_and_an_account_for_it(console):
    stack = console.stack
    async with console.session() as browser:
        await browser.sign_in(stack.admin)
        csrf = await browser.csrf("/admin")
        status, _, page = await browser.post("/admin/principals", {"csrf": csrf, "role": "client", "name": "alice"})
        assert status == 200 and "shown once" in page
        token = re.search(r'<output class="secret">([^<]+)</output>', page).group(1)
        principal_id = re.search(r"id ([0-9a-f-]{36})\)", page).group(1)
        status, _, page = await browser.post("/admin/accounts", {"csrf": csrf, "kind": "wallet", "currency": "EUR",
                                                                 "owner_id": principal_id, "name": "alice's"})
        assert status == 200 and "Account created" in page
    me = await stack.client.get("/v1/me", token=token)
    assert me.status == 200 and me.body["id"] == principal_id and me.body["role"] == "client"
    accounts = await stack.client.get("/v1/accounts", token=token)
    assert [(a["kind"], a["currency"]) for a in accounts.body["items"]] == [("wallet", "EUR")]


async def test_an_auditor_downloads_the_journal_as_the_api_exports_it(console):
    stack = console.stack
    wallet, vendor = await stack.funded_wallet(10), await stack.vendor()
    await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10)
    _, auditor = await stack.principal("auditor")
    async with console.session() as browser:
        await browser.sign_in(auditor)
        async with browser.http.get(f"{console.url}/audit/journal.ndjson") as response:
            assert response.status == 200 and response.content_type == "application/x-ndjson"
            exported = await response.read()
    direct = await stack.client.get("/v1/journal", token=auditor, params={"limit": schemas.JOURNAL_LIMIT_MAX})
    lines = exported.decode().splitlines()
    assert lines and lines == direct.text.splitlines()[:len(lines)]
    assert json.loads(lines[0])["position"] == 1
