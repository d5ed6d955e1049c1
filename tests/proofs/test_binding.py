"""Proof binding (issue 24 #1, contract v3 "Entries a verifier can recompute"): a proof binds an
entry's `hash`, so a verifier must recompute that hash from the fields it was shown. Here a
compromised server (a proxy in front of the real stack that forwards everything with the admin's
token and rewrites chosen answers) shows a real 1-cent entry's position and hash with another
amount or payee; the documented verifier (docs/proofs.md) and the typed client must both refuse
it, and must still accept a real, untampered transfer through the same proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web

import schemas
from client import LedgerClient, NotSignedYet, ProofError, SyncLedgerClient
from client import proof
from proofs import signing, tree
from tools.embedded import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "proofs.md"
MILLION = 1_000_000
VERIFIER_S_MAX = 60


@contextlib.asynccontextmanager
async def compromised(stack, forged: dict[str, dict]) -> AsyncIterator[str]:
    """A server answering `forged[path]` for those paths and the real answer, fetched with the
    admin's token (it can read every entry), for every other request."""

    async def answer(request: web.Request) -> web.Response:
        if request.path in forged:
            return web.json_response(forged[request.path])
        headers = {"Authorization": f"Bearer {stack.admin}"}
        async with session.request(request.method, stack.client.base + request.path_qs, headers=headers,
                                   data=await request.read()) as real:
            return web.Response(status=real.status, body=await real.read(), content_type=real.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    async with aiohttp.ClientSession() as session:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


async def signed_payments(stack, tmp_path) -> tuple[dict, dict, object, str]:
    """A real 1-cent payment to a vendor and a real 250 one to the same vendor, under a signed
    head; their answers from `GET /v1/transfers/{id}`, the vendor and the pinned key (hex)."""
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    answers = []
    for amount in (1, 250):
        reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, amount)
        assert reply.status == 201, reply.text
        shown = await stack.client.get(f"/v1/transfers/{reply.body['id']}", token=vendor.token)
        assert shown.status == 200, shown.text
        answers.append(shown.body)
    key = signing.load_or_create_key(tmp_path / "key.pem")
    async with await stack.superuser() as conn:
        await tree.sign_head(conn, key)
    return answers[0], answers[1], vendor, signing.public_key_hex(key)


def documented_verifier(tmp_path: Path) -> Path:
    match = re.search(r"```python\n# verify_payment.py\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"no ```python block starting with '# verify_payment.py' in {DOC}"
    script = tmp_path / "verify_payment.py"
    script.write_text(match.group(1))
    return script


async def run_documented_verifier(tmp_path: Path, url: str, token: str, key: str, transfer_id: str) -> tuple[int, str]:
    env = {**os.environ, "LEDGER_API_URL": url, "LEDGER_TOKEN": token, "LEDGER_PUBLIC_KEY": key,
           "LEDGER_TRUSTED_HEAD": str(tmp_path / "trusted_head.json")}
    child = await asyncio.create_subprocess_exec(sys.executable, str(documented_verifier(tmp_path)), transfer_id,
                                                 env=env, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(child.communicate(), timeout=VERIFIER_S_MAX)
    return child.returncode, out.decode()


async def verify_with_client(url: str, token: str, key: str, transfer_id: str) -> schemas.SignedTreeHead:
    async with LedgerClient(url, token=token, public_key=key, retry_total_s=0) as ledger:
        return await ledger.verify(await ledger.get_transfer(transfer_id))


async def test_a_real_cent_entry_shown_as_a_million_fails_the_documented_verifier_and_the_client(stack, tmp_path):
    cent, _, vendor, key = await signed_payments(stack, tmp_path)
    forged = {**cent, "amount": MILLION}
    async with compromised(stack, {f"/v1/transfers/{cent['id']}": forged}) as url:
        code, out = await run_documented_verifier(tmp_path, url, vendor.token, key, cent["id"])
        assert code == 1 and "NOT verified" in out, out
        with pytest.raises(ProofError, match="do not hash to"):
            await verify_with_client(url, vendor.token, key, cent["id"])


async def test_a_cent_paid_to_someone_else_shown_as_a_million_to_the_vendor_fails(stack, tmp_path):
    """Another payee, another amount, and a hash recomputed to match them: the hash then is not
    the leaf at that position, so inclusion fails (and without the recomputation, the hash)."""
    cent, _, _, key = await signed_payments(stack, tmp_path)
    victim = await stack.vendor()
    for rehash in (False, True):
        forged = {**cent, "amount": MILLION, "to_account_id": victim.account_id,
                  "postings": [{"account_id": cent["from_account_id"], "amount": -MILLION},
                               {"account_id": victim.account_id, "amount": MILLION}]}
        if rehash:
            forged["hash"] = proof.entry_hash(msgspec.convert(forged, schemas.Transfer))
        async with compromised(stack, {f"/v1/transfers/{cent['id']}": forged}) as url:
            code, out = await run_documented_verifier(tmp_path, url, victim.token, key, cent["id"])
            assert code == 1 and "NOT verified" in out, (rehash, out)
            with pytest.raises(ProofError):
                await verify_with_client(url, victim.token, key, cent["id"])


async def test_another_real_entry_answered_for_the_asked_transfer_fails(stack, tmp_path):
    """The 250 entry is real, hashed and in the tree, but it is not the transfer asked for."""
    cent, other, vendor, key = await signed_payments(stack, tmp_path)
    async with compromised(stack, {f"/v1/transfers/{cent['id']}": other}) as url:
        code, out = await run_documented_verifier(tmp_path, url, vendor.token, key, cent["id"])
        assert code == 1 and "another transfer" in out, out
        async with LedgerClient(url, token=vendor.token, public_key=key, retry_total_s=0) as ledger:
            shown = await ledger.verification(vendor.account_id, cent["id"], min_position=cent["position"],
                                              wait_ms=5000)
            with pytest.raises(ProofError, match="transfer_id"):
                await ledger.verify(shown)


async def test_a_verification_shown_with_another_amount_fails_the_client(stack, tmp_path):
    """The vendor route (or a webhook's `data`) shows a million; the hashed entry says a cent."""
    cent, _, vendor, key = await signed_payments(stack, tmp_path)
    path = f"/v1/vendors/{vendor.account_id}/transfers/{cent['id']}/verification"
    real = await stack.client.get(path, token=vendor.token, params={"min_position": cent["position"], "wait_ms": 5000})
    assert real.status == 200, real.text
    async with compromised(stack, {path: {**real.body, "amount": MILLION}}) as url:
        async with LedgerClient(url, token=vendor.token, public_key=key, retry_total_s=0) as ledger:
            shown = await ledger.verification(vendor.account_id, cent["id"])
            assert shown.amount == MILLION
            with pytest.raises(ProofError, match="amount"):
                await ledger.verify(shown)
            honest = await ledger.verify(msgspec.convert(real.body, schemas.Verification))
            assert honest.tree_size >= cent["position"]


async def test_a_real_transfer_still_verifies_through_the_same_proxy(stack, tmp_path):
    _, real, vendor, key = await signed_payments(stack, tmp_path)
    assert real["prev_hash"] and real["postings"], real
    async with compromised(stack, {}) as url:
        code, out = await run_documented_verifier(tmp_path, url, vendor.token, key, real["id"])
        assert code == 0 and out.startswith("verified"), out
        head = await verify_with_client(url, vendor.token, key, real["id"])
        assert head.tree_size >= real["position"]

    def blocking() -> None:  # on a thread: the stack's server runs on this test's loop
        with SyncLedgerClient(stack.client.base, token=vendor.token, public_key=key) as ledger:
            assert ledger.verify(ledger.get_transfer(real["id"])).tree_size == head.tree_size
            assert ledger.trusted_head == head

    await asyncio.to_thread(blocking)


async def test_the_documented_verifier_refuses_a_head_that_does_not_extend_the_one_it_trusted(stack, tmp_path):
    _, real, vendor, key = await signed_payments(stack, tmp_path)
    code, out = await run_documented_verifier(tmp_path, stack.client.base, vendor.token, key, real["id"])
    assert code == 0, out
    trusted = json.loads((tmp_path / "trusted_head.json").read_text())
    _, later, _, _ = await signed_payments(stack, tmp_path)  # the same key file: the same signer
    fork = await forked_head(stack, tmp_path)
    async with compromised(stack, {"/v1/journal/checkpoints/latest": fork}) as url:
        code, out = await run_documented_verifier(tmp_path, url, vendor.token, key, real["id"])
    assert code == 1 and "does not extend" in out, out
    assert json.loads((tmp_path / "trusted_head.json").read_text()) == trusted


async def forked_head(stack, tmp_path) -> dict:
    """The latest head's size and entry hash with another root, signed with the pinned key: what
    a signer of a rewritten history would publish."""
    latest = (await stack.client.get("/v1/journal/checkpoints/latest", token=stack.admin)).body
    key = signing.load_or_create_key(tmp_path / "key.pem")
    fork = {**latest, "root_hash": "ab" * 32}
    head = msgspec.convert(fork, schemas.SignedTreeHead)
    fork["signature"] = key.sign(proof.tree_head_bytes(head)).hex()
    return fork


async def test_the_client_refuses_a_head_that_does_not_extend_the_one_it_trusted(stack, tmp_path):
    _, real, vendor, key = await signed_payments(stack, tmp_path)
    async with LedgerClient(stack.client.base, token=vendor.token, public_key=key, retry_total_s=0) as honest:
        trusted = await honest.verify(await honest.get_transfer(real["id"]))
    assert trusted.tree_size >= real["position"]
    _, later, other_vendor, _ = await signed_payments(stack, tmp_path)
    fork = await forked_head(stack, tmp_path)
    async with compromised(stack, {"/v1/journal/checkpoints/latest": fork}) as url:
        async with LedgerClient(url, token=other_vendor.token, public_key=key, trusted_head=trusted,
                                retry_total_s=0) as ledger:
            with pytest.raises(ProofError, match="does not extend"):
                await ledger.verify(await ledger.get_transfer(later["id"]))
            assert ledger.trusted_head == trusted
    async with LedgerClient(stack.client.base, token=other_vendor.token, public_key=key,
                            trusted_head=trusted) as ledger:
        extended = await ledger.verify(await ledger.get_transfer(later["id"]))
        assert extended.tree_size > trusted.tree_size and ledger.trusted_head == extended
        first_vendor = ledger.as_principal(vendor.token)  # shares the trusted head
        assert first_vendor.trusted_head == extended
        assert await first_vendor.verify(await first_vendor.get_transfer(real["id"])) == extended


async def test_a_real_refund_verifies_with_its_hashed_kind_and_refund_of(stack, tmp_path):
    """Fields hashed only away from their default (`kind`, `refund_of`) are rebuilt from the answer."""
    _, real, vendor, key = await signed_payments(stack, tmp_path)
    refund = await stack.client.post(f"/v1/transfers/{real['id']}/refunds", token=vendor.token, json={"amount": 100},
                                     key="refund-" + real["id"])
    assert refund.status == 201, refund.text
    assert refund.body["kind"] == "refund" and refund.body["refund_of"] == real["id"]
    async with await stack.superuser() as conn:
        await tree.sign_head(conn, signing.load_or_create_key(tmp_path / "key.pem"))
    code, out = await run_documented_verifier(tmp_path, stack.client.base, vendor.token, key, refund.body["id"])
    assert code == 0 and "refund" in out, out
    async with LedgerClient(stack.client.base, token=vendor.token, public_key=key) as ledger:
        head = await ledger.verify(msgspec.convert(refund.body, schemas.Transfer))  # the 201 itself
        assert head.tree_size >= refund.body["position"]


async def test_a_transfer_newer_than_the_signed_head_is_not_signed_yet_rather_than_forged(stack, tmp_path):
    cent, _, vendor, key = await signed_payments(stack, tmp_path)
    wallet = await stack.funded_wallet(10)
    newer = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 5)
    assert newer.status == 201, newer.text
    async with LedgerClient(stack.client.base, token=vendor.token, public_key=key) as ledger:
        with pytest.raises(NotSignedYet, match="retry after the next signature"):
            await ledger.verify(msgspec.convert(newer.body, schemas.Transfer))
        assert (await ledger.verify(await ledger.get_transfer(cent["id"]))).tree_size < newer.body["position"]
