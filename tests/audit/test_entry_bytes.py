"""The audit's fast path over rows (`audit.entries`) against the one canonical form,
`domain.canonical_bytes` of the entry: equal bytes for generated entries of every kind, unicode,
control characters and edge values included, and the entry made back from its row equal to it."""

from __future__ import annotations

import typing
import uuid

import msgspec
import pytest
from hypothesis import example, given, settings, strategies as st

import audit
from ledger import domain
from ledger.store.audit import AUDITED_COLUMNS
from schemas import EntryKind, JournalEntry, Posting

INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1  # the journal's integer columns
EXAMPLES = 400

int8 = st.integers(INT8_MIN, INT8_MAX)
# Any text PostgreSQL stores: unicode (no lone surrogates, as UTF-8 has none), quotes,
# backslashes, controls, DEL and line separators included.
text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=24)
plain_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=12)
# The previous hash is hashed as ASCII (`domain.entry_hash`), whatever it holds.
ascii_text = st.text(st.characters(min_codepoint=0x01, max_codepoint=0x7f), max_size=70)
postings = st.lists(st.builds(Posting, st.uuids(), int8), max_size=4)


@st.composite
def entries(draw) -> JournalEntry:
    """An entry as the journal might hold one, honest or tampered: any kind, any values."""
    return JournalEntry(
        position=draw(st.integers(1, INT8_MAX)),
        transfer_id=draw(st.uuids()),
        from_account_id=draw(st.uuids()),
        to_account_id=draw(st.uuids()),
        amount=draw(int8),
        currency=draw(st.one_of(plain_text, text)),
        reference=draw(st.one_of(plain_text, text)),
        metadata=draw(st.dictionaries(text, text, max_size=5)),
        postings=draw(postings),
        committed_at=draw(st.one_of(st.just("2026-11-26T14:35:53.374180Z"), text)),
        prev_hash=draw(st.one_of(st.just(domain.ZERO_HASH), ascii_text)),
        hash=draw(st.one_of(st.just("f" * 64), text)),
        kind=draw(st.sampled_from(typing.get_args(EntryKind))),
        refund_of=draw(st.none() | st.uuids()),
        hold_id=draw(st.none() | st.uuids()),
    )


def as_row(entry: JournalEntry) -> tuple:
    """The entry as the audit reads it (`AUDITED_COLUMNS`): UUIDs as text, every string a fresh
    object (as a row's are: equal to a default, never the default object itself)."""
    def stored(value: object) -> object:
        if isinstance(value, uuid.UUID):
            return str(value)
        return value.encode().decode() if isinstance(value, str) else value

    columns = {name: stored(getattr(entry, name)) for name in JournalEntry.__struct_fields__}
    columns["account_ids"] = [str(p.account_id) for p in entry.postings] or None
    columns["amounts"] = [p.amount for p in entry.postings] or None
    columns["balances_after"] = [0] * len(entry.postings) or None
    return tuple(columns[name] for name in AUDITED_COLUMNS)


A_PLAIN_TRANSFER = JournalEntry(
    position=1, transfer_id=uuid.UUID(int=1), from_account_id=uuid.UUID(int=2), to_account_id=uuid.UUID(int=3),
    amount=5, currency="EUR", reference="", metadata={}, postings=[Posting(uuid.UUID(int=2), -5), Posting(uuid.UUID(int=3), 5)],
    committed_at="2026-11-26T14:35:53.374180Z", prev_hash=domain.ZERO_HASH, hash="0" * 64,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(entries())
@example(A_PLAIN_TRANSFER)
@example(msgspec.structs.replace(A_PLAIN_TRANSFER, position=INT8_MAX, amount=INT8_MIN,
                                 postings=[Posting(uuid.UUID(int=0), INT8_MAX), Posting(uuid.UUID(int=2**128 - 1), INT8_MIN)]))
@example(msgspec.structs.replace(A_PLAIN_TRANSFER, reference='Grüße "\\\x7f\u2028\U0001f600', currency="\x01\t",
                                 metadata={"zeta": "é", "alpha": "\x7f", "": ""}, kind="refund", refund_of=uuid.uuid4()))
@pytest.mark.slow  # hundreds of generated entries: the property runs in `make test`
@example(msgspec.structs.replace(A_PLAIN_TRANSFER, kind="expire", hold_id=uuid.uuid4(), postings=[]))
def test_the_hashed_form_of_a_row_encodes_to_the_entrys_canonical_bytes(entry):
    row = as_row(entry)
    assert audit.canonical_bytes(row) == domain.canonical_bytes(entry)
    assert audit.hash_mismatches([row]) == ({} if domain.recompute_hash(entry) == entry.hash
                                            else {entry.position: domain.recompute_hash(entry)})


@pytest.mark.slow  # hundreds of generated entries: the property runs in `make test`
@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(entries())
def test_the_entry_made_from_a_row_is_the_entry_and_exports_as_it(entry):
    [(made, balances_after)] = audit.entries_from_rows([as_row(entry)], {})
    assert made == entry and balances_after == [0] * len(entry.postings)
    assert msgspec.json.encode(made) == msgspec.json.encode(entry)  # a default kind left out, as the store's


def test_a_field_at_its_default_is_left_out_and_any_other_value_kept():
    row = as_row(A_PLAIN_TRANSFER)
    assert b'"kind"' not in audit.canonical_bytes(row) and b'"refund_of"' not in audit.canonical_bytes(row)
    refund = as_row(msgspec.structs.replace(A_PLAIN_TRANSFER, kind="refund", refund_of=uuid.UUID(int=9)))
    assert b'"kind":"refund"' in audit.canonical_bytes(refund)
    assert b'"refund_of":"00000000-0000-0000-0000-000000000009"' in audit.canonical_bytes(refund)


def test_the_hashed_form_has_every_field_of_the_entry_but_its_hash():
    assert set(audit.HashedEntry.__struct_fields__) == set(JournalEntry.__struct_fields__) - {"hash"}


# ---- the written-out path (`audit.entries.written_out`), taken by plain entries ----------------

# Strings JSON holds as they stand: printable ASCII but `"` and `\`.
plain_chars = st.characters(min_codepoint=0x20, max_codepoint=0x7e, exclude_characters='"\\')


@st.composite
def plain_entries(draw) -> JournalEntry:
    """An entry the written-out path takes: its fields with a default at it, no metadata, two
    postings, every string plain (any such string, edge integers included)."""
    payer, payee = draw(st.uuids()), draw(st.uuids())
    amount = draw(int8)
    return JournalEntry(
        position=draw(st.integers(1, INT8_MAX)), transfer_id=draw(st.uuids()), from_account_id=payer,
        to_account_id=payee, amount=amount, currency=draw(st.text(plain_chars, max_size=5)),
        reference=draw(st.text(plain_chars, max_size=24)), metadata={},
        postings=[Posting(payer, draw(int8)), Posting(payee, draw(int8))],
        committed_at=draw(st.text(plain_chars, max_size=30)), prev_hash=draw(st.text(plain_chars, max_size=70)),
        hash=draw(st.text(plain_chars, max_size=64)),
    )


@pytest.mark.slow  # hundreds of generated entries: the property runs in `make test`
@settings(max_examples=EXAMPLES, deadline=None)
@given(plain_entries())
def test_a_plain_entry_is_written_out_to_its_canonical_bytes_and_hash(entry):
    row = as_row(entry)
    assert audit.entries.written_out(row) == domain.canonical_bytes(entry)
    assert audit.entries.written_out_hash(row) == domain.recompute_hash(entry)


# One change each that takes an otherwise plain entry off the written-out path: a field with a
# default away from it (every kind), metadata, another count of postings, and each kind of
# character JSON escapes (or canonical_json does: DEL, non-ASCII) in each string field.
_ESCAPED_CHARACTERS = ('"', "\\", "\x00", "\n", "\x1f", "\x7f", "é", "\u2028", "\U0001f600")
NOT_PLAIN = [
    *({"kind": kind} for kind in typing.get_args(EntryKind) if kind != "transfer"),
    {"refund_of": uuid.UUID(int=7)}, {"hold_id": uuid.UUID(int=8)},
    {"metadata": {"a": "b"}}, {"postings": []}, {"postings": [Posting(uuid.UUID(int=2), 0)]},
    {"postings": [Posting(uuid.UUID(int=2), -5), Posting(uuid.UUID(int=3), 2), Posting(uuid.UUID(int=2), 3)]},
    *({name: f"a{char}b"} for name in ("currency", "reference", "committed_at", "prev_hash")
      for char in _ESCAPED_CHARACTERS),
]


def test_every_entry_but_a_plain_one_takes_the_exact_path_to_its_canonical_bytes():
    for change in NOT_PLAIN:
        entry = msgspec.structs.replace(A_PLAIN_TRANSFER, **change)
        row = as_row(entry)
        assert audit.entries.written_out(row) is None and audit.entries.written_out_hash(row) is None, change
        assert audit.canonical_bytes(row) == domain.canonical_bytes(entry), change
        if entry.prev_hash.isascii():  # the hash takes it as ASCII (`domain.entry_hash`)
            assert audit.entries.recomputed_hash(row) == domain.recompute_hash(entry), change


def test_the_written_out_path_is_made_from_every_hashed_field_of_the_entry():
    """Each field the hash covers is in the written-out source: a field added to the entry is
    written out (or sends every entry to the exact path) without a change to the audit."""
    source = audit.entries.WRITTEN_OUT_SOURCE
    for name in set(JournalEntry.__struct_fields__) - {"hash"}:
        assert name in source, name
    assert audit.entries.written_out(as_row(A_PLAIN_TRANSFER)) == domain.canonical_bytes(A_PLAIN_TRANSFER)
