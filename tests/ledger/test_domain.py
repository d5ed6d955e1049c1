"""The pure core, without a database: the decision for each transfer and the hash chain."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid

import msgspec

import schemas
from ledger import domain
from ledger.domain import AccountState, BatchState, Committed, Rejected, Rejection, Replayed
from schemas import Posting

CLIENT = uuid.uuid4()
WALLET = AccountState(uuid.uuid4(), "wallet", "USD", CLIENT, 100)
VENDOR = AccountState(uuid.uuid4(), "vendor", "USD", uuid.uuid4(), 0)
EURO_VENDOR = AccountState(uuid.uuid4(), "vendor", "EUR", uuid.uuid4(), 0)
SYSTEM = AccountState(uuid.uuid4(), "system", "USD", None, 0, min_balance=None)
STAMP = "2026-01-01T00:00:00.000000Z"


def command(amount=10, *, source=WALLET.id, target=VENDOR.id, key="k", currency="USD", principal=CLIENT,
            role="client", body=b"same") -> domain.EntryCommand:
    return domain.EntryCommand(principal, role, key, body, source, target, amount, currency, "", {})


def state(*accounts: AccountState, keys=None) -> BatchState:
    return BatchState(0, domain.ZERO_HASH, {a.id: a for a in accounts}, keys or {})


def decide(commands, batch_state):
    return domain.decide_batch(commands, batch_state, committed_at=STAMP)


def test_a_payment_commits_with_postings_that_sum_to_zero():
    result = decide([command(30)], state(WALLET, VENDOR))
    (outcome,) = result.outcomes
    assert isinstance(outcome, Committed)
    assert outcome.entry.postings == [Posting(WALLET.id, -30), Posting(VENDOR.id, 30)]
    assert result.balance_deltas == {WALLET.id: -30, VENDOR.id: 30}
    assert outcome.entry.position == 1 and outcome.entry.prev_hash == domain.ZERO_HASH


def test_later_commands_in_a_batch_see_the_earlier_ones():
    result = decide([command(60, key="a"), command(60, key="b")], state(WALLET, VENDOR))
    assert isinstance(result.outcomes[0], Committed)
    assert result.outcomes[1] == Rejected(Rejection.insufficient_funds)


def test_the_same_key_twice_in_a_batch_is_a_replay():
    result = decide([command(10), command(10)], state(WALLET, VENDOR))
    assert isinstance(result.outcomes[0], Committed)
    assert result.outcomes[1] == Replayed(1)
    assert len(result.entries) == 1


def test_a_stored_key_with_another_body_is_reused():
    keys = {(CLIENT, "k"): (b"other", 9)}
    assert decide([command()], state(WALLET, VENDOR, keys=keys)).outcomes == [
        Rejected(Rejection.idempotency_key_reused)
    ]


def test_rejections_follow_the_contracts_order():
    cases = [
        (command(source=VENDOR.id), Rejection.forbidden),  # not the client's wallet
        (command(source=uuid.uuid4(), role="admin"), Rejection.account_not_found),
        (command(target=WALLET.id), Rejection.same_account),
        (command(target=uuid.uuid4()), Rejection.account_not_found),
        (command(target=EURO_VENDOR.id), Rejection.currency_mismatch),
        (command(currency="EUR"), Rejection.currency_mismatch),
        (command(101), Rejection.insufficient_funds),
    ]
    for cmd, expected in cases:
        assert decide([cmd], state(WALLET, VENDOR, EURO_VENDOR)).outcomes == [Rejected(expected)], expected


def test_only_system_accounts_go_below_zero():
    result = decide([command(500, source=SYSTEM.id, target=WALLET.id, role="admin")], state(SYSTEM, WALLET))
    assert isinstance(result.outcomes[0], Committed)
    assert result.balance_deltas[SYSTEM.id] == -500


def test_the_hash_chain_links_each_entry_to_the_previous():
    result = decide([command(10, key="a"), command(10, key="b")], state(WALLET, VENDOR))
    first, second = result.entries
    assert second.prev_hash == first.hash


def test_an_auditor_recomputes_the_hash_with_the_stdlib_alone():
    (entry,) = decide([command(10)], state(WALLET, VENDOR)).entries
    exported = json.loads(schemas.encode(entry))
    digest = exported.pop("hash")
    canonical = json.dumps(exported, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert hashlib.sha256(exported["prev_hash"].encode() + canonical).hexdigest() == digest


def test_changing_any_field_changes_the_hash():
    (entry,) = decide([command(10)], state(WALLET, VENDOR)).entries
    assert domain.recompute_hash(msgspec.structs.replace(entry, amount=11)) != entry.hash


def test_the_fast_canonical_form_equals_the_documented_one_for_awkward_text():
    for text in ("plain", "é 漢字", "\x7f", "\x00\x01\x1f", 'q"b\\s/', "\n\r\t\b\f", "\ud7ff\ue000"):
        body = {"reference": text, "metadata": {text: text}, "id": str(uuid.UUID(int=7)), "amount": 2**53 - 1}
        reference = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        assert domain.canonical_json(body) == reference, repr(text)


def test_sealed_hash_matches_the_hash_recomputed_from_the_export():
    awkward = command(5, key="x")
    awkward = domain.EntryCommand(**{**{f: getattr(awkward, f) for f in domain.EntryCommand.__slots__},
                                        "reference": "é\x7f", "metadata": {"z": "1", "a": "漢"}})
    (entry,) = decide([awkward], state(WALLET, VENDOR)).entries
    exported = json.loads(schemas.encode(entry))
    digest = exported.pop("hash")
    canonical = json.dumps(exported, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert hashlib.sha256(exported["prev_hash"].encode() + canonical).hexdigest() == digest


def test_a_balance_past_int8_is_refused_not_left_to_the_database():
    rich = AccountState(VENDOR.id, "vendor", "USD", None, domain.BALANCE_MAX - 5)
    result = decide([command(10)], state(WALLET, rich))
    assert result.outcomes == [Rejected(Rejection.balance_limit_exceeded)]


def test_an_event_position_past_the_journal_column_range_is_rejected_when_decoded():
    """A forged far-ahead position is refused by the type, before the projector sees it."""
    entry = {
        "position": schemas.POSITION_MAX, "transfer_id": str(uuid.uuid4()), "from_account_id": str(WALLET.id),
        "to_account_id": str(VENDOR.id), "amount": 5, "currency": "USD", "reference": "", "metadata": {},
        "postings": [{"account_id": str(WALLET.id), "amount": -5}, {"account_id": str(VENDOR.id), "amount": 5}],
        "committed_at": "2026-11-26T12:00:00.000000Z", "prev_hash": "0" * 64, "hash": "ab" * 32,
    }
    decoder = msgspec.json.Decoder(schemas.JournalEntry)
    assert decoder.decode(json.dumps(entry)).position == schemas.POSITION_MAX
    try:
        decoder.decode(json.dumps({**entry, "position": schemas.POSITION_MAX + 1}))
    except msgspec.ValidationError as error:
        assert "$.position" in str(error)
    else:
        raise AssertionError("a position past 2**63-1 was accepted")


def _refund(amount, *, key, original, refundable=100) -> domain.EntryCommand:
    vendor_owner = VENDOR.owner_id
    return domain.EntryCommand(vendor_owner, "vendor", key, key.encode(), VENDOR.id, WALLET.id, amount, "USD", "",
                                  {}, kind="refund", refund_of=original, refundable_amount=refundable)


def test_refunds_in_one_batch_are_decided_in_order_against_the_running_total():
    original = uuid.uuid4()
    rich_vendor = AccountState(VENDOR.id, "vendor", "USD", VENDOR.owner_id, 1000)
    batch_state = BatchState(0, domain.ZERO_HASH, {WALLET.id: WALLET, VENDOR.id: rich_vendor}, {}, {original: 30})
    result = decide([_refund(50, key="a", original=original), _refund(30, key="b", original=original),
                     _refund(20, key="c", original=original)], batch_state)
    assert [type(o) for o in result.outcomes] == [Committed, Rejected, Committed]
    assert result.outcomes[1].reason is Rejection.refund_exceeds_transfer
    assert result.refunded == {original: (100, 100)}
    assert [(e.kind, e.refund_of) for e in result.entries] == [("refund", original)] * 2


def test_a_refund_over_the_total_is_refused_before_insufficient_funds():
    original = uuid.uuid4()
    result = decide([_refund(101, key="a", original=original)], state(WALLET, VENDOR))
    assert result.outcomes == [Rejected(Rejection.refund_exceeds_transfer)]
    result = decide([_refund(10, key="a", original=original)], state(WALLET, VENDOR))
    assert result.outcomes == [Rejected(Rejection.insufficient_funds)]


def test_each_posting_carries_its_account_balance_after_the_entry():
    result = decide([command(30), command(20, key="k2")], state(WALLET, VENDOR))
    first, second = result.entries
    assert result.balances_after == {first.position: [70, 30], second.position: [50, 50]}


def test_a_batch_is_never_stamped_before_the_previous_entry():
    earlier = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    later = earlier + dt.timedelta(microseconds=1)
    assert domain.stamp_after(earlier, later) == later and domain.stamp_after(later, earlier) == later
    assert domain.stamp_after(earlier, None) == earlier


# ---- holds ----------------------------------------------------------------------------------

HOLDING = AccountState(domain.holding_account_id("USD"), "system", "USD", None, 0, min_balance=None)
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def hold_step(kind, hold_id, *, amount=0, key=None) -> domain.EntryCommand:
    return domain.EntryCommand(CLIENT, "admin", key or f"{kind}-{amount}", kind.encode() + bytes([amount]),
                                  WALLET.id, VENDOR.id, amount, "USD", "", {}, kind=kind, hold_id=hold_id)


def placed(amount=40, expires_in_s=60) -> tuple[domain.HoldState, BatchState]:
    hold_id = uuid.uuid4()
    place = domain.EntryCommand(CLIENT, "client", "h", b"h", WALLET.id, VENDOR.id, amount, "USD", "r", {},
                                   kind="hold", hold_id=hold_id, expires_in_s=expires_in_s)
    result = domain.decide_batch([place], state(WALLET, VENDOR, HOLDING), committed_at=STAMP, now=NOW)
    (entry,) = result.entries
    assert entry.postings == sorted([Posting(WALLET.id, -amount), Posting(HOLDING.id, amount)],
                                    key=lambda p: (p.amount, p.account_id))
    accounts = {a.id: dataclasses.replace(a, balance=a.balance + result.balance_deltas.get(a.id, 0))
                for a in (WALLET, VENDOR, HOLDING)}
    after = BatchState(1, entry.hash, accounts, {}, holds=dict(result.holds))
    return result.holds[hold_id], after


def test_a_capture_and_a_void_in_one_batch_the_first_wins():
    hold, after = placed()
    result = domain.decide_batch([hold_step("capture", hold.id, amount=15), hold_step("void", hold.id)], after,
                                 committed_at=STAMP, now=NOW)
    assert isinstance(result.outcomes[0], Committed)
    assert result.outcomes[1] == Rejected(Rejection.hold_not_pending)
    (entry,) = result.entries
    assert (entry.kind, entry.amount, sum(p.amount for p in entry.postings)) == ("capture", 15, 0)
    assert {p.account_id: p.amount for p in entry.postings} == {HOLDING.id: -40, VENDOR.id: 15, WALLET.id: 25}
    assert (result.holds[hold.id].status, result.holds[hold.id].captured_amount) == ("captured", 15)


def test_the_batch_clock_decides_between_a_capture_and_the_expiry():
    hold, after = placed(expires_in_s=60)
    late = NOW + dt.timedelta(seconds=60)
    result = domain.decide_batch([hold_step("capture", hold.id), hold_step("expire", hold.id)], after,
                                 committed_at=STAMP, now=late)
    assert result.outcomes[0] == Rejected(Rejection.hold_expired)
    assert result.entries[0].kind == "expire" and result.holds[hold.id].status == "expired"
    early = domain.decide_batch([hold_step("expire", hold.id)], after, committed_at=STAMP, now=NOW)
    assert early.outcomes == [Rejected(Rejection.hold_not_pending)]


def test_a_capture_may_not_pass_its_hold():
    hold, after = placed(amount=40)
    result = domain.decide_batch([hold_step("capture", hold.id, amount=41)], after, committed_at=STAMP, now=NOW)
    assert result.outcomes == [Rejected(Rejection.capture_exceeds_hold)]
