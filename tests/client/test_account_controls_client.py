"""The typed client's account controls, in its blocking face (the async one underneath): an account
created with limits, frozen, refused, unfrozen, paid; the account entry read back and its hash
recomputed by the client's own verifier."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from client import LedgerProblem, SyncLedgerClient, proof


def _script_freezes_and_unfreezes(base_url: str, admin_token: str) -> dict:
    """A plain script: no asyncio, no await."""
    with SyncLedgerClient(base_url, token=admin_token) as admin:
        alice = admin.create_principal(role="client", name="controls Alice")
        wallet = admin.create_account(kind="wallet", currency="USD", owner_id=alice.id, min_balance=-200,
                                      max_balance=10_000)
        shop = admin.create_account(kind="system", currency="USD")
        payer = admin.as_principal(alice.token)
        frozen = admin.update_account(wallet.id, status="frozen")
        with pytest.raises(LedgerProblem) as refused:
            payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=50, currency="USD",
                           idempotency_key=str(uuid.uuid4()))
        admin.update_account(wallet.id, status="active")
        paid = payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=150, currency="USD",
                              idempotency_key=str(uuid.uuid4()))
        entries = [e for e in admin.journal(after=0) if e.kind == "account" and e.account_id == wallet.id]
        shown = [payer.get_transfer(e.transfer_id) for e in entries]
        return {"wallet": wallet, "frozen": frozen, "refused": refused.value, "paid": paid, "shown": shown,
                "after": payer.get_account(wallet.id)}


async def test_the_client_sets_limits_freezes_and_verifies_the_account_entries(stack):
    seen = await asyncio.to_thread(_script_freezes_and_unfreezes, stack.client.base, stack.admin)
    assert (seen["wallet"].min_balance, seen["wallet"].max_balance, seen["frozen"].status) == (-200, 10_000, "frozen")
    assert (seen["refused"].status, seen["refused"].code) == (422, "account_frozen")
    assert (seen["paid"].status, seen["after"].balance, seen["after"].status) == ("committed", -150, "active")
    assert [(t.kind, t.account_status, t.min_balance) for t in seen["shown"]] == [
        ("account", "active", -200), ("account", "frozen", -200), ("account", "active", -200)]
    for shown in seen["shown"]:
        proof.check_entry(shown)  # the hash recomputed from what the owner was shown
