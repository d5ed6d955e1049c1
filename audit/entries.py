"""The entry as the audit reads it (a row), its hashed form and the entry, derived from JournalEntry.

All three follow the one `schemas.JournalEntry`, so that a field added to the entry cannot be
forgotten here.

A row is a plain tuple of an entry's stored values (`ledger.store.audit.AUDITED_COLUMNS`: the
entry's fields but `postings`, in the entry's order, then each posting's account, amount and
stored balance after), UUIDs as text: cheap to read, to send between processes and to hash.
Made of it:

- its hashed form, `HashedEntry`: a Struct made from the entry's own fields and defaults, less
  `hash`. msgspec encodes it with the keys sorted and the fields at their default left out: the
  bytes of `domain.canonical_bytes`, without making UUID objects or the entry
  (tests/audit/test_entry_bytes.py proves them equal for generated entries);
- the entry itself, for the replay (`entries_from_rows`).
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter

import msgspec

from ledger import domain
from ledger.store.audit import AUDITED_COLUMNS, POSTING_COLUMNS
from schemas import JournalEntry, Posting

_SPECS = msgspec.structs.fields(JournalEntry)
_COLUMN = {name: index for index, name in enumerate(AUDITED_COLUMNS)}
_ACCOUNTS, _AMOUNTS, _BALANCES_AFTER = (_COLUMN[name] for name in POSTING_COLUMNS)
_POSITION, _PREV_HASH, _HASH = _COLUMN["position"], _COLUMN["prev_hash"], _COLUMN["hash"]
# What the hash leaves out whatever it holds (`domain.canonical_bytes`).
_UNHASHED = frozenset(domain._UNHASHED)


def _field(spec: msgspec.structs.FieldInfo) -> tuple:
    if spec.default is msgspec.NODEFAULT and spec.default_factory is msgspec.NODEFAULT:
        return spec.name, spec.type
    default = spec.default if spec.default is not msgspec.NODEFAULT else msgspec.field(default_factory=spec.default_factory)
    return spec.name, spec.type, default


# Not validated when made (no Struct is): the row's UUID texts stand in for UUIDs, which msgspec
# encodes as exactly that text (lower case, hyphenated, as PostgreSQL writes them).
HashedEntry = msgspec.defstruct(
    "HashedEntry", [_field(spec) for spec in _SPECS if spec.name not in _UNHASHED],
    omit_defaults=True, frozen=True, gc=False, module=__name__,
)
_sorted = msgspec.json.Encoder(order="sorted")  # struct fields and dict keys, at every level


def _taker(names: Sequence[str]) -> Callable[[Sequence], tuple]:
    """The row's values of the columns `names`, as a tuple (empty or one included)."""
    indices = [_COLUMN[name] for name in names]
    if len(indices) > 1:
        return itemgetter(*indices)
    return lambda row: tuple(row[index] for index in indices)


def _plan(names: Sequence[str]) -> tuple[Callable, Callable, list[tuple[int, object]]]:
    """For a struct whose fields are `names`: the columns before `postings`, those after it, and
    (slot, default) of each field whose default is not None. msgspec leaves a default out of
    the encoding only when the field holds that very object, and a row holds an equal one."""
    cut = names.index("postings")
    defaults = {spec.name: spec.default for spec in _SPECS if spec.default not in (msgspec.NODEFAULT, None)}
    restored = [(slot, defaults[name]) for slot, name in enumerate(names) if name in defaults]
    return _taker(names[:cut]), _taker(names[cut + 1:]), restored


_HASHED_BEFORE, _HASHED_AFTER, _HASHED_DEFAULTS = _plan(HashedEntry.__struct_fields__)


def hashed_form(row: Sequence) -> HashedEntry:
    """The row's entry as its hash covers it, its UUIDs as text."""
    values = [*_HASHED_BEFORE(row), list(map(Posting, row[_ACCOUNTS] or (), row[_AMOUNTS] or ())), *_HASHED_AFTER(row)]
    for slot, default in _HASHED_DEFAULTS:
        if values[slot] == default:
            values[slot] = default
    return HashedEntry(*values)


def encoded(hashed: HashedEntry) -> bytes:
    """`domain.canonical_bytes` of the entry: msgspec's sorted encoding, which is the canonical
    form as long as it is plain ASCII; anything else takes `domain.canonical_json` itself."""
    fast = _sorted.encode(hashed)
    if fast.isascii() and b"\x7f" not in fast:
        return fast
    return domain.canonical_json(msgspec.json.decode(fast))


def canonical_bytes(row: Sequence) -> bytes:
    return encoded(hashed_form(row))


def stored_hash(row: Sequence) -> str:
    return row[_HASH]


def balances_after(row: Sequence) -> list[int] | None:
    """The stored balance after the entry of each of its postings, in order."""
    return row[_BALANCES_AFTER]


def hash_mismatches(rows: Iterable[Sequence]) -> dict[int, str]:
    """Position -> recomputed hash, for each row whose stored `hash` is not the one its content
    calls for. Each entry's hash needs only its own content and stored `prev_hash`, so the rows
    of a journal can be judged in any order, in any process; the chain (each `prev_hash` the
    previous entry's `hash`) is the replay's to judge, in order."""
    mismatches = {}
    for row in rows:
        recomputed = domain.entry_hash(row[_PREV_HASH], canonical_bytes(row))
        if recomputed != row[_HASH]:
            mismatches[row[_POSITION]] = recomputed
    return mismatches


# ---- rows to entries, for the replay ----------------------------------------------------------

_ENTRY_BEFORE, _ENTRY_AFTER, _ENTRY_DEFAULTS = _plan(JournalEntry.__struct_fields__)
_UUID_SLOTS = [slot for slot, spec in enumerate(_SPECS) if uuid.UUID in (spec.type, *typing.get_args(spec.type))]


def entries_from_rows(
    rows: Iterable[Sequence], account_ids: Mapping[str, uuid.UUID]
) -> list[tuple[JournalEntry, list[int]]]:
    """The rows as entries, each with its postings' stored balances after. `account_ids`: the
    accounts by their text form, so that entries share one UUID object per account instead of
    making one per mention (making a UUID costs more than the rest of the entry). Made without
    validation, as the store makes them: the replay judges what the values say."""
    uuid_of = account_ids.get
    entries = []
    for row in rows:
        postings = [Posting(uuid_of(a) or _uuid(a), n) for a, n in zip(row[_ACCOUNTS] or (), row[_AMOUNTS] or ())]
        values = [*_ENTRY_BEFORE(row), postings, *_ENTRY_AFTER(row)]
        for slot in _UUID_SLOTS:
            text = values[slot]
            if text is not None:
                values[slot] = uuid_of(text) or _uuid(text)
        for slot, default in _ENTRY_DEFAULTS:
            if values[slot] == default:
                values[slot] = default  # the struct's own object, so an export leaves it out
        entries.append((JournalEntry(*values), row[_BALANCES_AFTER] or []))
    return entries


def _uuid(text: str) -> uuid.UUID:
    return msgspec.convert(text, uuid.UUID)  # made in C: half the time of uuid.UUID(text)
