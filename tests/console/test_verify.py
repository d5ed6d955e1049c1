"""console/static/verify.js in real Chromium against real entries, proofs and signed tree heads.

The entries (a payment with unicode metadata, a refund, holds captured and voided, account
controls), proofs and heads come from the real stack; the browser gets them from a loopback server
of the test's own, which serves console/static under a Content-Security-Policy without
`unsafe-inline`, as the console does. What the browser computes is compared with the journal and with client.proof.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
import pytest_asyncio
from aiohttp import web

import schemas
from client import proof
from ledger import domain
from proofs import signing, tree
from tools.embedded import free_port

STATIC = Path(__file__).resolve().parents[2] / "console" / "static"
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; object-src 'none'"
# Code points whose order differs between Python (code points) and JS's default sort (UTF-16
# units): U+FB01 sorts before U+1F600 in Python, after it in UTF-16.
UNICODE_METADATA = {"\ufb01le": "r\u00e9sum\u00e9 \u2028", "\U0001f600": "caf\u00e9 \U0001f4b6 \"q\" \\", "a": "\x7f\t"}
ZERO_KEY = "00" * 32
NOT_SIGNED_YET = {"type": "about:blank", "title": "Not found", "status": 404, "code": "not_found",
                  "detail": "no tree head is signed yet"}
OTHER_KEY = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
# Runs a named export of verify.js in the page: `call(page, "verifyEntry", ...)`.
CALL = "async ([name, args]) => { const m = await import('/static/verify.js'); return m[name](...args); }"
# Runs a named export of verify.js on JSON text as the page reads it (parseExact keeps every
# integer exact): `call_on_text(page, "entryHash", text)`.
CALL_ON_TEXT = ("async ([name, text]) => { const m = await import('/static/verify.js'); "
                "return m[name](m.parseExact(text)); }")


def page_html(body: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>verify</title>"
            "<script type=module src=/static/verify-page.js></script></head><body>" + body + "</body></html>")


def verify_markup(entry: dict, proof_url: str, public_key: str) -> str:
    # "<" escaped so that no metadata can close the script element.
    data = json.dumps(entry).replace("<", "\\u003c")
    return page_html(
        f'<section id="verify" data-proof-url="{proof_url}" data-public-key="{public_key}">'
        f'<script type="application/json" id="entry-data">{data}</script>'
        '<button id="verify-button">Verify independently</button>'
        '<ol id="verify-steps"></ol><p id="verify-result" role="status"></p></section>')


def consistency_markup(proof_url: str, public_key: str) -> str:
    return page_html(
        f'<section id="consistency" data-proof-url="{proof_url}" data-public-key="{public_key}">'
        '<form><label>From <input name="first" value="1"></label><label>To <input name="second" value="2"></label>'
        '<button type="submit">Check consistency</button></form>'
        '<ol id="consistency-steps"></ol><p id="consistency-result" role="status"></p></section>')


@contextlib.asynccontextmanager
async def site(pages: dict[str, str], answers: dict[str, object]) -> AsyncIterator[str]:
    """console/static under /static/, `pages` under /page/{name}, `answers` (JSON) under /proof/{name}."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text={"blank": page_html(""), **pages}[request.match_info["name"]], content_type="text/html",
                            headers={"Content-Security-Policy": CSP})

    async def no_icon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def answer(request: web.Request) -> web.Response:
        if request.match_info["name"] not in answers:
            return web.json_response(NOT_SIGNED_YET, status=404, content_type="application/problem+json")
        return web.json_response(answers[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/page/{name}", page)
    app.router.add_get("/proof/{name}", answer)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/favicon.ico", no_icon)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def post(stack, path: str, token: str, body: dict | None = None) -> dict:
    reply = await stack.client.post(path, token=token, json=body if body is not None else {}, key=str(uuid.uuid4()))
    assert reply.status == 201, reply.text
    return reply.body


async def payments(stack) -> tuple[object, object, dict, dict]:
    """A wallet, a vendor, a payment with unicode metadata and a plain one."""
    wallet = await stack.funded_wallet(10_000)
    vendor = await stack.vendor()
    pay = {"from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "currency": "USD"}
    unicode_payment = await post(stack, "/v1/transfers", wallet.token,
                                 {**pay, "amount": 250, "reference": "\u00fcber \U0001f600", "metadata": UNICODE_METADATA})
    plain = await post(stack, "/v1/transfers", wallet.token, {**pay, "amount": 700})
    return wallet, vendor, unicode_payment, plain


async def refund_holds_and_controls(stack, wallet, vendor, plain: dict) -> None:
    """A refund of part of `plain`, a hold captured and one voided, and account entries (a cap past
    2^53, which the page must keep exact, a credit line, a freeze and its end)."""
    await post(stack, f"/v1/transfers/{plain['id']}/refunds", vendor.token, {"amount": 300, "metadata": {"why": "n\u00f8"}})
    pay = {"from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "currency": "USD"}
    for finish in ("capture", "void"):
        hold = await post(stack, "/v1/holds", wallet.token, {**pay, "amount": 40})
        await post(stack, f"/v1/holds/{hold['id']}/{finish}", vendor.token)
    for change in ({"max_balance": 2**63 - 1, "min_balance": -5}, {"status": "frozen"},
                   {"status": "active", "max_balance": None}):
        reply = await stack.client.request("PATCH", f"/v1/accounts/{wallet.account_id}", token=stack.admin, json=change)
        assert reply.status == 200, reply.text


async def sign(stack, key) -> dict:
    async with await stack.superuser() as conn:
        signed = await tree.sign_head(conn, key)
    latest = await stack.client.get("/v1/journal/checkpoints/latest", token=stack.admin)
    assert latest.status == 200 and latest.body == msgspec.to_builtins(signed), latest.text
    return latest.body


async def proof_of(stack, path: str, **params) -> dict:
    reply = await stack.client.get(path, token=stack.admin, params=params)
    assert reply.status == 200, reply.text
    return reply.body


@pytest_asyncio.fixture(scope="module")
async def world(stack, tmp_path_factory) -> dict:
    """Real entries of every kind made here, a head signed amid them and one after, their proofs."""
    key = signing.load_or_create_key(tmp_path_factory.mktemp("verify") / "key.pem")
    start = (await proof_of(stack, "/v1/journal/head"))["position"]
    wallet, vendor, payment, plain = await payments(stack)
    first_head = await sign(stack, key)
    await refund_holds_and_controls(stack, wallet, vendor, plain)
    head = await sign(stack, key)
    journal = await stack.client.get("/v1/journal", token=stack.admin, params={"after": start, "limit": 1000})
    # not splitlines(): U+2028 in metadata is no line end in ndjson
    entries = [json.loads(line) for line in journal.text.split("\n") if line]
    shown = await stack.client.get(f"/v1/transfers/{payment['id']}", token=vendor.token)
    assert shown.status == 200, shown.text
    refund = next(e for e in entries if e.get("kind") == "refund")
    inclusion = "/v1/journal/proofs/inclusion"
    return {"key": signing.public_key_hex(key), "payment": shown.body, "head": head, "first_head": first_head,
            "entries": entries, "inclusion": await proof_of(stack, inclusion, position=payment["position"],
                                                            tree_size=head["tree_size"]),
            "other_inclusion": await proof_of(stack, inclusion, position=refund["position"], tree_size=head["tree_size"]),
            "consistency": await proof_of(stack, "/v1/journal/proofs/consistency", from_size=first_head["tree_size"],
                                          to_size=head["tree_size"])}


async def call(page, name: str, *args):
    return await page.evaluate(CALL, [name, list(args)])


def as_transfer(entry: dict) -> dict:
    """An exported journal entry shown as a transfer answer (its `transfer_id` is the answer's `id`)."""
    shown = {name: value for name, value in entry.items() if name != "transfer_id"}
    return {**shown, "id": entry["transfer_id"], "status": "committed"}


async def test_every_entry_kind_hashes_in_the_browser_as_in_python_and_the_journal(world, page):
    async with site({}, {}) as base:
        await page.goto(base + "/page/blank")
        kinds = set()
        for entry in world["entries"]:
            shown = as_transfer(entry)
            python = proof.entry_hash(msgspec.convert(shown, schemas.Transfer))
            in_browser = await page.evaluate(CALL_ON_TEXT, ["entryHash", json.dumps(shown)])
            assert in_browser == python == entry["hash"], entry
            kinds.add(entry.get("kind", "transfer"))
        assert {"transfer", "refund", "hold", "capture", "void", "account"} <= kinds, kinds
        tricky = {"metadata": {**UNICODE_METADATA, "\uffff": "\u0000\u001f\u0080", "\U00010000": "\ud7ff"},
                  "n": [0, -1, 2**53 - 1, 2**53 + 1, -(2**63 - 1)], "t": True, "z": None}
        canonical = await page.evaluate(CALL_ON_TEXT, ["canonicalJson", json.dumps(tricky)])
        assert canonical == domain.canonical_json(tricky).decode("ascii")


def oks(outcome: dict) -> tuple[bool, list[bool]]:
    return outcome["ok"], [step["ok"] for step in outcome["steps"]]


async def entry_outcomes(page, world: dict, ed25519: str) -> dict[str, dict]:
    """verifyEntry on the real payment, honest and forged, with one Ed25519 implementation."""
    payment, inclusion, head, key = world["payment"], world["inclusion"], world["head"], world["key"]
    options = {"ed25519": ed25519}
    cases = {
        "real": (payment, inclusion, head, key),
        "proof of another entry": (payment, world["other_inclusion"], head, key),
        "tampered amount": ({**payment, "amount": payment["amount"] + 1}, inclusion, head, key),
        "wrong pinned key": (payment, inclusion, head, ZERO_KEY[:-2] + "01"),
        "another real key": (payment, inclusion, head, OTHER_KEY),
        "tampered head root": (payment, inclusion, {**head, "root_hash": ZERO_KEY}, key),
        "no pinned key": (payment, inclusion, head, ""),
    }
    return {name: await call(page, "verifyEntry", *args, options) for name, args in cases.items()}


async def test_verify_entry_passes_a_real_payment_and_fails_each_forgery_with_both_ed25519s(world, page):
    async with site({}, {}) as base:
        await page.goto(base + "/page/blank")
        native = await entry_outcomes(page, world, "webcrypto")
        assert oks(native["real"]) == (True, [True] * 4), native["real"]
        assert oks(native["proof of another entry"]) == (False, [True, False, False, True])
        assert oks(native["tampered amount"]) == (False, [False, True, True, True])
        assert oks(native["wrong pinned key"]) == (False, [True, True, True, False])
        assert oks(native["another real key"]) == (False, [True, True, True, False])
        assert oks(native["tampered head root"]) == (False, [True, True, False, False])
        assert oks(native["no pinned key"]) == (False, [True, True, True, False])
        assert "no published public key" in native["no pinned key"]["steps"][3]["detail"]
        assert "not signed by the published key" in native["wrong pinned key"]["steps"][3]["detail"]
        noble = await entry_outcomes(page, world, "noble")
        assert noble == native


async def test_verify_consistency_passes_two_real_heads_and_fails_a_forged_proof(world, page):
    first, second, consistency, key = world["first_head"], world["head"], world["consistency"], world["key"]
    assert consistency["proof"], "the heads are of different sizes, so the proof has hashes"
    forged = {**consistency, "proof": [ZERO_KEY] + consistency["proof"][1:]}
    async with site({}, {}) as base:
        await page.goto(base + "/page/blank")
        for ed25519 in ("webcrypto", "noble"):
            options = {"ed25519": ed25519}
            real = await call(page, "verifyConsistency", first, second, consistency, key, options)
            assert oks(real) == (True, [True] * 3), real
            swapped = await call(page, "verifyConsistency", second, first, consistency, key, options)
            assert oks(swapped) == (True, [True] * 3), swapped
            bad = await call(page, "verifyConsistency", first, second, forged, key, options)
            assert oks(bad) == (False, [True, True, False]), bad
            assert "does not extend" in bad["steps"][2]["detail"]
            unsigned = await call(page, "verifyConsistency", first, {**second, "signature": "00" * 64}, consistency,
                                  key, options)
            assert oks(unsigned) == (False, [True, False, True]), unsigned


async def result_after(page, url: str, control: str, result: str) -> str:
    await page.goto(url)
    await page.click(control)
    await page.wait_for_function(f"['Verified', 'Failed'].includes(document.querySelector('{result}').textContent)")
    return await page.text_content(result)


async def test_the_page_says_verified_or_failed_under_a_strict_csp(world, page):
    """verify-page.js on the console's markup, served with a CSP without unsafe-inline; the proof
    routes answer as the console's would, honestly or with another entry's proof."""
    key, head = world["key"], world["head"]
    pages = {"real": verify_markup(world["payment"], "/proof/real", key),
             "other": verify_markup(world["payment"], "/proof/other", key),
             "consistency": consistency_markup("/proof/consistency", key)}
    answers = {"real": {"inclusion": world["inclusion"], "head": head},
               "other": {"inclusion": world["other_inclusion"], "head": head},
               "consistency": {"first": world["first_head"], "second": head, "proof": world["consistency"]}}
    async with site(pages, answers) as base:
        assert await result_after(page, base + "/page/real", "#verify-button", "#verify-result") == "Verified"
        steps = await page.locator("#verify-steps li").all_text_contents()
        assert len(steps) == 4 and all(step.startswith("Passed: ") for step in steps), steps
        assert await result_after(page, base + "/page/other", "#verify-button", "#verify-result") == "Failed"
        steps = await page.locator("#verify-steps li").all_text_contents()
        assert [step.split(":")[0] for step in steps] == ["Passed", "Failed", "Failed", "Passed"], steps
        assert await result_after(page, base + "/page/consistency", "#consistency button",
                                  "#consistency-result") == "Verified"
        assert not page.console_lines, page.console_lines  # no CSP violation, no script error
        pages["unsigned"] = verify_markup(world["payment"], "/proof/unsigned", key)
        assert await result_after(page, base + "/page/unsigned", "#verify-button", "#verify-result") == "Failed"
        said = await page.text_content("#verify-steps")
        assert said == "Failed: Fetch the proof — the server could not give the proof (404): no tree head is signed yet"


async def test_without_webcrypto_ed25519_the_vendored_one_gives_the_same_answers(world, page):
    """A browser whose WebCrypto has no Ed25519 (simulated: importKey refuses it, as such a
    browser does) checks signatures with the vendored @noble/ed25519."""
    await page.add_init_script("""{
        const importKey = crypto.subtle.importKey.bind(crypto.subtle);
        crypto.subtle.importKey = (format, data, algorithm, ...rest) =>
          (algorithm && (algorithm.name || algorithm) === 'Ed25519')
            ? Promise.reject(new DOMException('Unrecognized name.', 'NotSupportedError'))
            : importKey(format, data, algorithm, ...rest);
    }""")
    async with site({}, {}) as base:
        await page.goto(base + "/page/blank")
        fallback = await entry_outcomes(page, world, "auto")
        assert oks(fallback["real"]) == (True, [True] * 4), fallback["real"]
        assert oks(fallback["another real key"]) == (False, [True, True, True, False])
        assert oks(fallback["wrong pinned key"]) == (False, [True, True, True, False])
        forced = await call(page, "verifyEntry", world["payment"], world["inclusion"], world["head"], world["key"],
                            {"ed25519": "webcrypto"})
        assert forced["steps"][3]["detail"] == "this browser's WebCrypto has no Ed25519", forced
        loaded = await page.evaluate("performance.getEntriesByType('resource').map(r => r.name)")
        assert any(name.endswith("/static/vendor/noble-ed25519/index.js") for name in loaded), loaded
