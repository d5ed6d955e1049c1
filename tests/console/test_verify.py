"""console/static/verify.js in real Chromium against real entries, proofs and signed tree heads.

The entries (a payment with unicode metadata, a refund, holds captured and voided), proofs and
heads come from the real stack; the browser gets them from a loopback server of the test's own,
which serves console/static under a Content-Security-Policy without `unsafe-inline`, as the
console does. What the browser computes is compared with the journal and with client.proof.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
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
# Runs a named export of verify.js in the page: `call(page, "verifyEntry", ...)`.
CALL = "async ([name, args]) => { const m = await import('/static/verify.js'); return m[name](...args); }"


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

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(answers[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/page/{name}", page)
    app.router.add_get("/proof/{name}", answer)
    app.router.add_static("/static/", STATIC)
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


async def refund_and_holds(stack, wallet, vendor, plain: dict) -> None:
    """A refund of part of `plain`, a hold captured and one voided."""
    await post(stack, f"/v1/transfers/{plain['id']}/refunds", vendor.token, {"amount": 300, "metadata": {"why": "n\u00f8"}})
    pay = {"from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "currency": "USD"}
    for finish in ("capture", "void"):
        hold = await post(stack, "/v1/holds", wallet.token, {**pay, "amount": 40})
        await post(stack, f"/v1/holds/{hold['id']}/{finish}", vendor.token)


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
    await refund_and_holds(stack, wallet, vendor, plain)
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
            assert await call(page, "entryHash", shown) == python == entry["hash"], entry
            kinds.add(entry.get("kind", "transfer"))
        assert {"transfer", "refund", "hold", "capture", "void"} <= kinds, kinds
        tricky = {"metadata": {**UNICODE_METADATA, "\uffff": "\u0000\u001f\u0080", "\U00010000": "\ud7ff"},
                  "n": [0, -1, 2**53 - 1], "t": True, "z": None}
        assert await call(page, "canonicalJson", tricky) == domain.canonical_json(tricky).decode("ascii")
