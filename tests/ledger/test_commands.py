"""ledger.commands: one function per kind of request builds the command the committer decides.

The request hashes are pinned to the bytes the API wrote before the builders moved here: stored
idempotency rows compare them, so a change would turn every retry of an old key into
`idempotency_key_reused`.
"""

from __future__ import annotations

import datetime as dt
import uuid

import schemas
from ledger import commands, domain

PAYER = uuid.UUID("11111111-1111-4111-8111-111111111111")
PAYEE = uuid.UUID("22222222-2222-4222-8222-222222222222")
HOLD_ID = uuid.UUID("33333333-3333-4333-8333-333333333333")
ORIGINAL_ID = uuid.UUID("44444444-4444-4444-8444-444444444444")
CALLER = commands.Caller(uuid.UUID(int=7), "client", "key-1")

TRANSFER = schemas.TransferCreate(from_account_id=PAYER, to_account_id=PAYEE, amount=1234, currency="EUR",
                                  reference="inv-ü 7", metadata={"z": "1", "a": "é"})
HOLD_BODY = schemas.HoldCreate(from_account_id=PAYER, to_account_id=PAYEE, amount=900, currency="EUR",
                               reference="order 1", metadata={"b": "2", "a": "1"}, expires_in_s=600)
HOLD = domain.HoldState(HOLD_ID, PAYER, PAYEE, 900, "EUR", "order 1", {"b": "2"}, "pending", 0,
                        dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), 5)


def _original(kind: str = "transfer") -> schemas.JournalEntry:
    return schemas.JournalEntry(
        position=3, transfer_id=ORIGINAL_ID, from_account_id=PAYER, to_account_id=PAYEE, amount=500,
        currency="EUR", reference="paid", metadata={}, postings=[], committed_at="2026-01-01T00:00:00.000000Z",
        prev_hash="0" * 64, hash="1" * 64, kind=kind,
    )


def test_a_transfer_hashes_as_the_api_always_did():
    command = commands.transfer(CALLER, TRANSFER)
    assert command.request_hash.hex() == "25f2f71a26a5acfa1f499172cc3c2a94dbecd0191946181b620f85f78668908d"
    plain = schemas.TransferCreate(from_account_id=PAYER, to_account_id=PAYEE, amount=1, currency="USD")
    assert commands.transfer(CALLER, plain).request_hash.hex() == (
        "1429ddf6f4c98a394f5629033631038a7a79de2b1f97156e3eb825582956d6fa"
    )


def test_a_transfer_command_carries_the_caller_and_the_body():
    command = commands.transfer(CALLER, TRANSFER)
    assert (command.principal_id, command.principal_role, command.idempotency_key) == (
        CALLER.principal_id, "client", "key-1"
    )
    assert (command.from_account_id, command.to_account_id, command.amount, command.currency) == (
        PAYER, PAYEE, 1234, "EUR"
    )
    assert (command.kind, command.reference, command.metadata) == ("transfer", "inv-ü 7", {"z": "1", "a": "é"})
    assert command.hold_id is None and command.refund_of is None


def test_metadata_order_does_not_change_the_hash():
    reordered = schemas.TransferCreate(from_account_id=PAYER, to_account_id=PAYEE, amount=1234, currency="EUR",
                                       reference="inv-ü 7", metadata={"a": "é", "z": "1"})
    assert commands.transfer(CALLER, reordered).request_hash == commands.transfer(CALLER, TRANSFER).request_hash


def test_a_refund_reverses_the_original_in_its_currency():
    body = schemas.RefundCreate(amount=50, reference="back", metadata={"k": "v"})
    command = commands.refund(CALLER, _original(), body)
    assert command.request_hash.hex() == "4920911b748b18129fe12692ba57f6d56e91e3bfda32ecc4a303789ef930dec3"
    assert (command.from_account_id, command.to_account_id, command.currency) == (PAYEE, PAYER, "EUR")
    assert (command.kind, command.amount, command.refund_of, command.refundable_amount) == (
        "refund", 50, ORIGINAL_ID, 500
    )
    assert (command.reference, command.metadata) == ("back", {"k": "v"})


def test_only_a_payment_into_a_vendor_account_is_refundable():
    assert commands.refundable(_original("transfer"), "vendor")
    assert commands.refundable(_original("capture"), "vendor")
    assert not commands.refundable(_original("refund"), "vendor")
    assert not commands.refundable(_original("hold"), "vendor")
    assert not commands.refundable(_original("transfer"), "wallet")


def test_a_hold_gets_a_new_id_and_hashes_as_before():
    command = commands.hold(CALLER, HOLD_BODY, new_id=lambda: HOLD_ID)
    assert command.request_hash.hex() == "fce332c192c17f89289a5092b720ad32207ba933c1cd81d4c55cd08946b5f43e"
    assert (command.kind, command.hold_id, command.expires_in_s, command.amount) == ("hold", HOLD_ID, 600, 900)
    assert (command.from_account_id, command.to_account_id, command.metadata) == (PAYER, PAYEE, {"b": "2", "a": "1"})
    again = commands.hold(CALLER, HOLD_BODY)
    assert again.hold_id != HOLD_ID and again.request_hash == command.request_hash


def test_a_capture_without_an_amount_takes_the_whole_hold_and_hashes_the_request_as_sent():
    whole = commands.capture(CALLER, HOLD, schemas.HoldCapture())
    part = commands.capture(CALLER, HOLD, schemas.HoldCapture(amount=300))
    assert whole.request_hash.hex() == "b11dfb90b712fa52783ba9d5427dc587d8108daacbf7996d98528f416c38b3dc"
    assert part.request_hash.hex() == "cbe324d080ae7e2c19e9bd71b6dfe6cc873bcd9c2cd219b97a19cd8fd5bb252e"
    assert (whole.amount, part.amount) == (900, 300)
    assert (part.kind, part.hold_id, part.from_account_id, part.to_account_id) == ("capture", HOLD_ID, PAYER, PAYEE)
    assert (part.currency, part.reference, part.metadata) == ("EUR", "order 1", {})


def test_a_void_returns_the_whole_hold():
    command = commands.void(CALLER, HOLD)
    assert command.request_hash.hex() == "e5091bb4132a55a84f5bca24ccb169a7c5b276e5f9ce5b082d2e56a770c79ee5"
    assert (command.kind, command.amount, command.hold_id, command.metadata) == ("void", 900, HOLD_ID, {})


def test_the_sweeper_expires_a_hold_under_its_own_key_space():
    command = commands.expire(HOLD)
    assert command.request_hash.hex() == "866e77d49e191035c6dcf62fd1db4e1e0afbff4239f7238e8bf431793a23da4d"
    assert (command.principal_id, command.principal_role) == (commands.SWEEPER_PRINCIPAL, "system")
    assert command.idempotency_key == f"expire:{HOLD_ID}"
    assert (command.kind, command.amount, command.hold_id) == ("expire", 900, HOLD_ID)


def test_one_key_cannot_mean_two_kinds_of_step():
    digests = {commands.void(CALLER, HOLD).request_hash, commands.expire(HOLD).request_hash,
               commands.capture(CALLER, HOLD, schemas.HoldCapture()).request_hash}
    assert len(digests) == 3


def test_the_same_request_builds_the_same_command_whichever_way_it_arrives():
    """A batch item and a single route call the same builder: equal input, equal command."""
    assert commands.transfer(CALLER, TRANSFER) == commands.transfer(CALLER, TRANSFER)
    body = schemas.RefundCreate(amount=50)
    assert commands.refund(CALLER, _original(), body) == commands.refund(CALLER, _original(), body)
