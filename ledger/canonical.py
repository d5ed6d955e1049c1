"""The canonical form of a journal entry: the bytes its hash covers, documented in docs/audit.md.

An auditor rebuilds them from an exported line with nothing but the json module and hashlib.
"""

from __future__ import annotations

import functools
import hashlib
import json

import msgspec

from schemas import JournalEntry


def canonical_json(body: dict) -> bytes:
    """The documented byte form of a JSON object: compact, keys sorted at every level, ASCII-only
    (non-ASCII escaped), UUIDs as lower-case hyphenated strings. An auditor rebuilds it from an
    exported line with nothing but the json module."""
    fast = _sorted_json.encode(body)
    # msgspec writes the same bytes as json.dumps(ensure_ascii=True) for every ASCII character
    # but DEL, which it leaves raw; anything else (non-ASCII, DEL) takes the reference path.
    if fast.isascii() and b"\x7f" not in fast:
        return fast
    plain = json.loads(fast)
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


_sorted_json = msgspec.json.Encoder(order="sorted")

# Fields outside the hashed form whatever they hold.
UNHASHED_FIELDS = ("hash",)


@functools.cache
def _omitted_at_default(entry_type: type) -> dict[str, object]:
    """Fields left out of the hashed form while they hold their default (as builtins): what lets
    a field added with a default keep the bytes of every entry written before it existed."""
    return {
        spec.encode_name: msgspec.to_builtins(spec.default)
        for spec in msgspec.structs.fields(entry_type)
        if spec.default is not msgspec.NODEFAULT
    }


def canonical_bytes(entry: JournalEntry) -> bytes:
    """The bytes an entry's hash covers: `canonical_json` of every field but `hash`, leaving out
    the fields that have a default and hold it (docs/audit.md)."""
    body = msgspec.to_builtins(entry)
    for name in UNHASHED_FIELDS:
        del body[name]
    for name, default in _omitted_at_default(type(entry)).items():
        if body.get(name, default) == default:
            body.pop(name, None)
    return canonical_json(body)


def entry_hash(prev_hash: str, canonical: bytes) -> str:
    """hash = hex SHA-256 over the previous hash (64 ASCII hex chars) followed by the canonical bytes."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


def recompute_hash(entry: JournalEntry) -> str:
    """The hash the entry's content and its `prev_hash` call for, whatever `hash` it carries."""
    return entry_hash(entry.prev_hash, canonical_bytes(entry))
