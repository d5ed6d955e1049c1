"""A journal exported before the single entry type (v1) still decodes, hashes and re-encodes exactly.

`fixtures/journal_v1.ndjson` is `GET /v1/journal` as the code of 47de2dd answered it: 30 entries
with non-ASCII, DEL, control characters and astral-plane text in references and metadata keys
and values, metadata of several keys in the order JSONB stores them. Any later change to the
entry type or its canonical form must leave every one of these hashes and bytes intact.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec

import schemas
from ledger import domain

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "journal_v1.ndjson"
V1_ENTRIES = 30

_decoder = msgspec.json.Decoder(schemas.JournalEntry)


def test_a_v1_journal_export_verifies_hash_for_hash_and_reencodes_byte_for_byte():
    lines = FIXTURE.read_bytes().splitlines(keepends=True)
    assert len(lines) == V1_ENTRIES
    prev_hash = domain.ZERO_HASH
    for position, line in enumerate(lines, start=1):
        entry = _decoder.decode(line)
        assert entry.position == position
        assert entry.prev_hash == prev_hash, f"the chain breaks at {position}"
        assert domain.recompute_hash(entry) == entry.hash, f"the hash of {position} changed"
        assert schemas.encode(entry) + b"\n" == line, f"the export of {position} changed"
        prev_hash = entry.hash


class _EntryWithLaterFields(schemas.JournalEntry, frozen=True):
    """The entry as a later version may extend it: new fields, each with a default."""

    kind: str = "transfer"
    refund_of: uuid.UUID | None = None


def test_fields_added_with_defaults_leave_the_hash_of_a_v1_entry_unchanged():
    later = msgspec.json.Decoder(_EntryWithLaterFields)
    for line in FIXTURE.read_bytes().splitlines():
        entry = later.decode(line)
        assert domain.recompute_hash(entry) == entry.hash
        refund = msgspec.structs.replace(entry, kind="refund", refund_of=entry.transfer_id)
        assert domain.recompute_hash(refund) != entry.hash
