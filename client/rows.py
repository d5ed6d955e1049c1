"""The rows of a file of commands for `ledger import`: CSV or NDJSON, read as a stream, one item a row.

A row is a batch item (`schemas.batches`): `type`, `idempotency_key` (optional here) and the body
fields of its single route. In CSV the header names the fields, an empty cell leaves its field out
(so one file may mix types) and `metadata.KEY` columns make up `metadata`; in NDJSON each line is
the item's JSON object. A row is decoded with the very item types the service decodes it with, so
a row the importer accepts is a row the service's shape check accepts.

Row numbers are what an operator finds in an editor: NDJSON's row N is line N; CSV's row N is the
N-th record after the header (line N + 1 unless a quoted cell holds a line break). Blank lines are
skipped but keep their numbers.

A row without a key gets one derived from the file's SHA-256 (a streaming first pass) and its row
number: the same file sent again asks for the same keys, so each row is committed once however
often the file is sent; a file changed in any byte asks for new keys.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import msgspec
import msgspec.inspect

from schemas.batches import BatchItem

FORMATS = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}  # by the file's suffix
READ_CHUNK_BYTES = 1 << 20  # the digest pass reads this much at a time: memory flat in the file's size
# The key a row gets unless it names one: a prefix of the file's digest and the row number. 128 bits
# of the digest keep two different files apart; the whole key stays far below 255 characters.
KEY_DIGEST_HEX_CHARS = 32
KEY_FORMAT = "import-{digest}-{row}"
METADATA_COLUMN_PREFIX = "metadata."
KEY_FIELD = "idempotency_key"
_INTEGER_CELL = re.compile(r"-?[0-9]+")  # what a CSV cell must look like to be read as an integer


class FileProblem(Exception):
    """The file as a whole cannot be imported (missing, unreadable, a header it cannot use)."""


@dataclasses.dataclass(slots=True)
class Rejection:
    """Why a row is not committed, in the service's problem terms (`code`, `detail`, `errors`)."""

    status: int
    code: str
    detail: str
    errors: list[dict[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class Row:
    """One row of the file: its item, or why it has none; `given` is what the file held."""

    number: int
    given: Any
    item: BatchItem | None = None
    rejection: Rejection | None = None


def _field_types() -> dict[str, bool]:
    """Every field an item may have, by name, and whether it is an integer (a CSV cell's reading)."""

    def is_integer(kind: msgspec.inspect.Type) -> bool:
        if isinstance(kind, msgspec.inspect.Metadata):
            return is_integer(kind.type)
        if isinstance(kind, msgspec.inspect.UnionType):
            return any(is_integer(member) for member in kind.types)
        return isinstance(kind, msgspec.inspect.IntType)

    fields = {"type": False}
    for item_type in get_args(BatchItem):
        for field in msgspec.inspect.type_info(item_type).fields:
            fields[field.encode_name] = fields.get(field.encode_name, False) or is_integer(field.type)
    return fields


FIELDS = _field_types()


def format_of(path: Path, chosen: str | None) -> str:
    """The file's format: the one chosen, else the one its suffix names."""
    found = chosen or FORMATS.get(path.suffix.lower())
    if found is None:
        raise FileProblem(f"{path}: cannot tell CSV from NDJSON by its name; say which with --format")
    return found


def digest_and_lines(path: Path) -> tuple[str, int]:
    """The file's SHA-256 (hex) and its number of lines, read a chunk at a time."""
    digest = hashlib.sha256()
    lines, last = 0, b"\n"
    try:
        with path.open("rb") as file:
            while chunk := file.read(READ_CHUNK_BYTES):
                digest.update(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError as error:
        raise FileProblem(f"{path}: {error.strerror or error}") from None
    return digest.hexdigest(), lines + (last != b"\n")


def derived_key(digest: str, row: int) -> str:
    return KEY_FORMAT.format(digest=digest[:KEY_DIGEST_HEX_CHARS], row=row)


def read(path: Path, file_format: str, digest: str) -> Iterator[Row]:
    """Every row of the file, in order, decoded; the file is read a line at a time."""
    try:
        with path.open("rb") as file:
            if file_format == "csv":
                yield from _csv_rows(path, file, digest)
            else:
                yield from _ndjson_rows(file, digest)
    except OSError as error:
        raise FileProblem(f"{path}: {error.strerror or error}") from None


def _ndjson_rows(lines: Iterator[bytes], digest: str) -> Iterator[Row]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            given = msgspec.json.decode(line)
        except msgspec.DecodeError as error:
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            yield Row(number, text, rejection=Rejection(400, "malformed_json", f"not JSON: {error}"))
            continue
        if not isinstance(given, dict):
            yield Row(number, given, rejection=Rejection(400, "validation_error", "a row is one JSON object"))
            continue
        # JSON Schema counts 584.0 as an integer, and so does the service (contract v3, "Settled").
        fields = {name: int(value) if isinstance(value, float) and value.is_integer() else value
                  for name, value in given.items()}
        yield _decoded(number, given, fields, digest)


def _csv_rows(path: Path, file: Iterator[bytes], digest: str) -> Iterator[Row]:
    # Lines are decoded one by one, so a byte that is not UTF-8 spoils its row only: the
    # surrogates it leaves are found in the row's cells below.
    text_lines = (line.decode("utf-8", "surrogateescape") for line in file)
    records = csv.reader(text_lines, strict=True)
    try:
        header = _header(path, next(records, None))
        for number, cells in enumerate(records, start=1):
            if cells:
                yield _csv_row(number, header, cells, digest)
    except csv.Error as error:
        raise FileProblem(f"{path}: line {records.line_num}: {error}") from None


def _header(path: Path, cells: list[str] | None) -> list[str]:
    """The header's column names, checked: a column no item has is a typo, refused before any row."""
    if not cells:
        raise FileProblem(f"{path}: no header row; the first line names the columns (type, amount, ...)")
    header = [name.strip() for name in cells]
    header[0] = header[0].removeprefix("\ufeff")  # the byte order mark spreadsheets write
    unknown = [name for name in header if name not in FIELDS and not _metadata_key(name)]
    if unknown:
        raise FileProblem(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; columns are "
                          f"{', '.join(FIELDS)} and {METADATA_COLUMN_PREFIX}KEY")
    if "type" not in header:
        raise FileProblem(f"{path}: no `type` column; each row says which command it is (transfer, refund, ...)")
    if len(set(header)) != len(header):
        raise FileProblem(f"{path}: a column is named twice in the header")
    return header


def _metadata_key(column: str) -> str:
    return column.removeprefix(METADATA_COLUMN_PREFIX) if column.startswith(METADATA_COLUMN_PREFIX) else ""


def _csv_row(number: int, header: list[str], cells: list[str], digest: str) -> Row:
    given = dict(zip(header, cells))
    if len(cells) != len(header):
        return Row(number, cells, rejection=Rejection(
            400, "validation_error", f"{len(cells)} cells; the header has {len(header)}"))
    if any(_not_utf8(cell) for cell in cells):
        given = {name: cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for name, cell in given.items()}
        return Row(number, given, rejection=Rejection(400, "validation_error", "not valid UTF-8"))
    fields: dict[str, Any] = {}
    for name, cell in given.items():
        if cell == "":
            continue  # an empty cell leaves the field out: its default, or a missing field
        if key := _metadata_key(name):
            fields.setdefault("metadata", {})[key] = cell
        elif FIELDS[name] and _INTEGER_CELL.fullmatch(cell):
            fields[name] = int(cell)
        else:
            fields[name] = cell
    return _decoded(number, {name: cell for name, cell in given.items() if cell != ""}, fields, digest)


def _not_utf8(cell: str) -> bool:
    try:
        cell.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _decoded(number: int, given: Any, fields: dict[str, Any], digest: str) -> Row:
    """The row's item, decoded as the service decodes it, with the derived key unless it names one."""
    fields.setdefault(KEY_FIELD, derived_key(digest, number))
    try:
        return Row(number, given, item=msgspec.convert(fields, BatchItem))
    except msgspec.ValidationError as error:
        message, _, path = str(error).rpartition(" - at `")
        issue = {"path": path.rstrip("`"), "message": message} if message else {"path": "$", "message": str(error)}
        return Row(number, given, rejection=Rejection(400, "validation_error", str(error), [issue]))
