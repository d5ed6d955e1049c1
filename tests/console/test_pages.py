"""The console in a real Chromium against the real stack: each role's main page, a payment seen live,
refunded and verified in the browser, and a revoked token signed out.

One browser per session (tests/plugins/browser.py), the console on the session's stack (tests/plugins/
console.py). Screenshots of each role's main page go to docs/console/ when LEDGER_CONSOLE_SCREENSHOTS
is set (how docs/console.md's were taken), else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from playwright.async_api import expect

LIVE_S_MAX = 2.0  # the bound: a payment shows on the vendor's open page within 2 s
VERIFY_MS_MAX = 10_000
NARROW_PX = 375  # the narrowest screen the console must read well on
TAB_PRESSES_MAX = 10  # the sign-in page has a few links before its one field
WIDE = {"width": 1100, "height": 760}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"

pytestmark = pytest.mark.slow


def _shots(tmp_path: Path) -> Path:
    return DOCS if os.environ.get("LEDGER_CONSOLE_SCREENSHOTS") else tmp_path


async def _signed_in(browser, console, token: str, viewport: dict = WIDE):
    context = await browser.new_context(viewport=viewport)
    context.set_default_timeout(VERIFY_MS_MAX)
    page = await context.new_page()
    await page.goto(f"{console.url}/sign-in")
    await _tab_to(page, page.get_by_label("API token"))  # by keyboard alone: Tab to the field,
    await page.keyboard.type(token)  # type, and Enter sends the form
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return page


async def _tab_to(page, field, *, presses_max: int = TAB_PRESSES_MAX) -> None:
    for _ in range(presses_max):
        await page.keyboard.press("Tab")
        if await field.evaluate("element => element === document.activeElement"):
            return
    raise AssertionError(f"{presses_max} presses of Tab never reached the field on {page.url}")


async def _fits_narrow_screen(page) -> None:
    await page.set_viewport_size({"width": NARROW_PX, "height": 800})
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW_PX, f"{page.url} is {width} px wide at {NARROW_PX} px"


async def test_each_role_signs_in_to_its_main_page(browser, console, tmp_path):
    stack, shots = console.stack, _shots(tmp_path)
    wallet, vendor = await stack.funded_wallet(50_000), await stack.vendor()
    for amount, reference in ((1250, "order 1041"), (499, "order 1042"), (8800, "order 1043")):
        await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, amount, reference=reference)
    _, auditor = await stack.principal("auditor")
    await console.sign_tree_head()
    expected = {"vendor": (vendor.token, "Payments received"), "client": (wallet.token, "Wallets"),
                "auditor": (auditor, "Audit"), "admin": (stack.admin, "Admin")}
    for role, (token, heading) in expected.items():
        page = await _signed_in(browser, console, token)
        await expect(page.get_by_role("heading", level=1)).to_have_text(heading)
        if role == "vendor":
            await expect(page.locator("#payments")).to_contain_text("order 1043")
        await page.screenshot(path=str(shots / f"{role}.png"), full_page=True)
        await _fits_narrow_screen(page)
        await page.context.close()


async def test_the_auditor_checks_consistency_between_two_signed_heads_in_the_browser(browser, console):
    stack = console.stack
    _, auditor = await stack.principal("auditor")
    wallet, vendor = await stack.funded_wallet(100), await stack.vendor()  # the journal is never empty here
    await console.sign_tree_head()
    page = await _signed_in(browser, console, auditor)
    earlier = await (await page.request.get(f"{console.url}/audit/head.json")).text()
    await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10)
    await console.sign_tree_head()
    await page.reload()
    await page.get_by_label("An earlier signed tree head").fill(earlier)
    await page.get_by_role("button", name="Check consistency with the latest head").click()
    await expect(page.locator("#consistency-result")).to_have_text("Verified")
    await page.context.close()


async def test_a_payment_shows_live_is_refunded_and_verifies_in_the_browser(browser, console, tmp_path):
    stack = console.stack
    wallet, vendor = await stack.funded_wallet(10_000), await stack.vendor()
    shop = await _signed_in(browser, console, vendor.token)
    await shop.goto(f"{console.url}/vendor")
    payer = await _signed_in(browser, console, wallet.token)
    reference = f"order {uuid.uuid4().hex[:8]}"
    pay = payer.get_by_role("form", name="Pay a vendor")
    await pay.get_by_label("Vendor account id").fill(vendor.account_id)
    await pay.get_by_label("Amount").fill("2500")
    await pay.get_by_label("Reference").fill(reference)
    await pay.get_by_role("button", name="Pay").click()
    await expect(payer.get_by_role("heading", level=1)).to_have_text("Paid")
    row = shop.locator("#payments tr", has_text=reference)
    await expect(row).to_be_visible(timeout=LIVE_S_MAX * 1000)  # no reload: the page's script fetched it

    await row.get_by_role("link").click()
    await shop.get_by_label("Amount to refund").fill("700")
    await shop.get_by_role("button", name="Refund").click()
    await expect(shop.get_by_text("refunded so far: 700")).to_be_visible()

    await console.sign_tree_head()
    await shop.get_by_role("button", name="Verify independently").click()
    await expect(shop.locator("#verify-result")).to_have_text("Verified")
    await shop.screenshot(path=str(_shots(tmp_path) / "payment.png"), full_page=True)

    other = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1)
    await console.sign_tree_head()
    forged = await (await shop.request.get(f"{console.url}/payments/{other.body['id']}/proof.json")).json()
    await shop.route("**/proof.json", lambda route: route.fulfill(json=forged))
    await shop.reload()
    await shop.get_by_role("button", name="Verify independently").click()
    await expect(shop.locator("#verify-result")).to_have_text("Failed")
    await payer.context.close()
    await shop.context.close()


async def test_an_admin_revokes_the_vendor_whose_next_page_is_the_sign_in(browser, console):
    stack = console.stack
    vendor = await stack.vendor()
    shop = await _signed_in(browser, console, vendor.token)
    admin = await _signed_in(browser, console, stack.admin)
    await admin.get_by_label("Principal id", exact=True).fill(vendor.owner_id)
    await admin.get_by_role("button", name="Open").click()
    await admin.get_by_role("button", name="Revoke token").click()
    await expect(admin.get_by_text("revoked")).to_be_visible()
    await shop.reload()
    await expect(shop.get_by_label("API token")).to_be_visible()
    assert shop.url.endswith("/console/sign-in")
    await admin.context.close()
    await shop.context.close()
