"""The entry as the audit reads it (a row), its hashed form and the entry, derived from JournalEntry.

All three follow the one `schemas.JournalEntry`, so that a field added to the entry cannot be
forgotten here.

A row is a plain tuple of an entry's stored values (`ledger.store.audit.AUDITED_COLUMNS`: the
entry's fields but `postings`, in the entry's order, then each posting's account, amount and
stored balance after), UUIDs as text: cheap to read, to send between processes and to hash.
Made of it:

- its hashed form, `HashedEntry`: a Struct made from the entry's own fields and defaults, less
  `hash`. msgspec encodes it with the keys sorted and the fields at their default left out: the
  bytes of `domain.canonical_bytes`, without making UUID objects or the entry;
- for a plain entry (nearly all of them), those bytes and its hash written out at once by
  functions made at import from the entry's fields (`written_out`, `written_out_hash`), in about
  half the time (tests/audit/test_entry_bytes.py proves both equal to canonical_bytes);
- the entry itself, for the replay (`entries_from_rows`).
"""

from __future__ import annotations

import hashlib
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
_UNHASHED = frozenset(domain.UNHASHED_FIELDS)


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


def columns(*names: str) -> Callable[[Sequence], tuple]:
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
    return columns(*names[:cut]), columns(*names[cut + 1:]), restored


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


# ---- the plain entry written out ------------------------------------------------------------------
# Nearly every entry is plain: its fields with a default hold it (so the hash leaves them out), its
# metadata is empty, it has two postings, and its strings are printable ASCII but `"` and `\`,
# which msgspec and json.dumps alike write into JSON as they stand. Its canonical bytes are then
# the keys and values in a fixed order: one f-string, in functions made at import from the fields
# of `JournalEntry` and `Posting` (`_source`), so that a field added to the entry is written out,
# or sends every entry to the exact path, with no change here: about half the time of making a
# `HashedEntry` and encoding it. tests/audit/test_entry_bytes.py proves the bytes equal.
# A row's UUIDs are PostgreSQL's text of its uuid columns: hex and hyphens, written as they stand.
POSTINGS_WRITTEN_OUT = 2  # a transfer's; another count (a capture that returns a rest) takes the exact path
_OMITTED = domain._omitted_at_default(JournalEntry)  # encode name -> the default the hash leaves out
_DEFAULTED = {spec.name: _OMITTED[spec.encode_name] for spec in _SPECS if spec.encode_name in _OMITTED}
_defaulted = columns(*_DEFAULTED)
_DEFAULTS = tuple(_DEFAULTED.values())
_json = msgspec.json.encode


def at_defaults(row: Sequence) -> bool:
    """Whether each field of the row's entry that has a default holds it (as the hash compares)."""
    return _defaulted(row) == _DEFAULTS


def _plain(text: str) -> bool:
    """Whether JSON holds `text` as it stands (printable ASCII but quote and backslash): msgspec
    adds only its two quotes (no escape, no character of several bytes), and there is no DEL,
    which msgspec leaves as it is and canonical_json escapes."""
    return len(_json(text)) == len(text) + 2 and "\x7f" not in text


def _kind(info: msgspec.inspect.Type) -> str:
    """How a value of the type is written: "str" (as it stands, when plain), "uuid" (as it stands),
    "int" (its digits), "map" (an empty one only) or "structs" (a list, from the posting columns)."""
    if isinstance(info, msgspec.inspect.Metadata):
        return _kind(info.type)
    if isinstance(info, msgspec.inspect.LiteralType) and all(isinstance(v, str) for v in info.values):
        return "str"
    kinds = {msgspec.inspect.StrType: "str", msgspec.inspect.UUIDType: "uuid", msgspec.inspect.IntType: "int",
             msgspec.inspect.DictType: "map", msgspec.inspect.ListType: "structs"}
    kind = kinds.get(type(info))
    if kind is None or (kind == "structs" and not isinstance(info.item_type, msgspec.inspect.StructType)):
        raise TypeError(f"no written-out form for {info}: teach audit.entries._kind")
    return kind


def _object(fields: Iterable[tuple[str, str, str]]) -> tuple[str, list[str], list[str]]:
    """For fields (encode name, expression of the value, kind): the f-string's text of their JSON
    object (keys sorted), the conditions under which it is exact, and the strings to check."""
    pairs, checks, texts = [], [], []
    for key, value, kind in sorted(fields):
        assert _plain(key) and "'" not in key and "{" not in key, "a key goes into the source as it stands"
        if kind == "structs":
            pairs.append(f'"{key}":[{_postings(value)}]')
            texts += [f"{column}_{index}" for column in _posting_columns("str") for index in range(POSTINGS_WRITTEN_OUT)]
            continue
        written = {"str": f'"{{{value}}}"', "uuid": f'"{{{value}}}"', "int": f"{{{value}}}", "map": "{{}}"}[kind]
        pairs.append(f'"{key}":{written}')
        checks += [f"not {value}"] if kind == "map" else []
        texts += [value] if kind == "str" else []
    return "{{" + ",".join(pairs) + "}}", checks, texts


def _posting_columns(kind: str | None = None) -> dict[str, str]:
    """A posting's fields (of `kind`, or all) -> the posting column each is read from, in order."""
    specs, infos = msgspec.structs.fields(Posting), msgspec.inspect.type_info(Posting).fields
    return {spec.name: column for spec, info, column in zip(specs, infos, POSTING_COLUMNS)
            if kind is None or _kind(info.type) == kind}


def _postings(name: str) -> str:
    """The f-string's text of the `POSTINGS_WRITTEN_OUT` postings, each value a local named for
    its column and index (`account_ids_0`); `_source` unpacks them."""
    assert typing.get_args(next(spec.type for spec in _SPECS if spec.name == name)) == (Posting,), "postings"
    specs, infos = msgspec.structs.fields(Posting), msgspec.inspect.type_info(Posting).fields
    columns = _posting_columns()
    return ",".join(
        _object((spec.encode_name, f"{columns[spec.name]}_{index}", _kind(info.type)) for spec, info in zip(specs, infos))[0]
        for index in range(POSTINGS_WRITTEN_OUT)
    )


def _source() -> str:
    """The source of `written_out` and `written_out_hash`: None unless the entry is plain."""
    fields = [(spec.encode_name, spec.name, _kind(info.type))
              for spec, info in zip(_SPECS, msgspec.inspect.type_info(JournalEntry).fields)
              if spec.name not in _UNHASHED and spec.encode_name not in _OMITTED]
    text, checks, texts = _object(fields)
    assert all(value is None or type(value) in (str, int) for value in _DEFAULTS), "a default goes into the source"
    checks += [f"{name} is None" if value is None else f"{name} == {value!r}" for name, value in _DEFAULTED.items()]
    columns = _posting_columns().values()
    unpacked = [f"({', '.join(f'{column}_{index}' for index in range(POSTINGS_WRITTEN_OUT))})" for column in columns]
    guard = [
        f"    ({', '.join(AUDITED_COLUMNS)}) = row",
        f"    if not ({' and '.join(checks)}):",
        "        return None",
        "    try:",
        f"        {', '.join(unpacked)} = {', '.join(columns)}",
        "    except (TypeError, ValueError):  # no postings, or another count",
        "        return None",
        "    texts = f\"" + "".join(f"{{{value}}}" for value in texts) + "\"",
        '    if not (len(_json(texts)) == len(texts) + 2 and "\\x7f" not in texts):  # `_plain`, inlined',
        "        return None",
    ]
    return "\n".join([
        "def written_out(row):", *guard, f"    return f'{text}'.encode()", "",
        "def written_out_hash(row):", *guard,
        f"    return _sha256(f'{{prev_hash}}{text}'.encode()).hexdigest()  # as `domain.entry_hash`",
    ])


# Kept for a reader: print(audit.entries.WRITTEN_OUT_SOURCE).
WRITTEN_OUT_SOURCE = _source()
_made = {"_json": _json, "_sha256": hashlib.sha256}
exec(compile(WRITTEN_OUT_SOURCE, f"<{__name__}.WRITTEN_OUT_SOURCE>", "exec"), _made)
written_out: Callable[[Sequence], bytes | None] = _made["written_out"]
written_out.__doc__ = "The canonical bytes of the row's entry if it is plain, else None."
written_out_hash: Callable[[Sequence], str | None] = _made["written_out_hash"]
written_out_hash.__doc__ = ("`domain.entry_hash` of the row's prev_hash and its entry's canonical bytes if the entry"
                            " is plain (so every field with a default holds it), else None.")


def canonical_bytes(row: Sequence) -> bytes:
    """`domain.canonical_bytes` of the row's entry."""
    return written_out(row) or encoded(hashed_form(row))


def recomputed_hash(row: Sequence) -> str:
    """The hash the row's content and its stored prev_hash call for (`domain.entry_hash`)."""
    return written_out_hash(row) or domain.entry_hash(row[_PREV_HASH], encoded(hashed_form(row)))


def hash_mismatches(rows: Iterable[Sequence]) -> dict[int, str]:
    """Position -> recomputed hash, for each row whose stored `hash` is not the one its content
    calls for. Each entry's hash needs only its own content and stored `prev_hash`, so the rows
    of a journal can be judged in any order, in any process; the chain (each `prev_hash` the
    previous entry's `hash`) is the replay's to judge, in order."""
    mismatches = {}
    for row in rows:
        recomputed = recomputed_hash(row)
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
