"""Searching entries by metadata, kind and time: the filters' query shapes and `GET /v1/transfers`.

Statements, vendor lists and the journal-wide list take the same filters (CONTRACT v3,
"Searching entries by metadata"): up to `SEARCH_METADATA_FILTERS_MAX` `metadata.KEY=VALUE`
exact matches that must all hold, `kind`, and `from`/`to` on `committed_at`. The query types
declare them once; `api.framework` gathers the `metadata.*` parameters into `metadata`, and
`ledger.store.search` turns a `store.EntryFilter` into SQL.
"""

from __future__ import annotations

import uuid
from typing import Annotated, ClassVar, Literal

import msgspec
from aiohttp import web

import schemas
from api.framework import (
    RFC3339_PATTERN, Call, Cursor, decode_cursor, encode_cursor, json_response, parse_time,
)
from ledger import store

METADATA_PREFIX = "metadata"
METADATA_DOC = (
    f"Also takes up to {schemas.SEARCH_METADATA_FILTERS_MAX} `metadata.KEY=VALUE` parameters (for example"
    " `metadata.order_id=A-1001`): only entries whose metadata holds exactly that value under that key, all"
    f" of them at once. KEY is 1..{schemas.METADATA_KEY_CHARS_MAX} characters and VALUE at most"
    f" {schemas.METADATA_VALUE_CHARS_MAX}, as in a transfer's metadata; otherwise 400 `validation_error`."
)
_TIME = Annotated[str, msgspec.Meta(pattern=RFC3339_PATTERN, extra_json_schema={"format": "date-time"})]


class SearchQuery(msgspec.Struct, forbid_unknown_fields=True):
    """A page of entries with the search filters. `metadata` is not a parameter of its own: the
    framework gathers every `metadata.KEY=VALUE` parameter into it (`PREFIXED`)."""

    PREFIXED: ClassVar[str] = METADATA_PREFIX
    PREFIXED_DOC: ClassVar[str] = METADATA_DOC

    after: Cursor = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=schemas.PAGE_LIMIT_MAX)] = 100
    kind: Annotated[schemas.SearchKind, msgspec.Meta(description="Only entries of this kind.")] | None = None
    since: Annotated[_TIME, msgspec.Meta(
        description="Only entries committed at or after this RFC 3339 time.")] | None = msgspec.field(
        default=None, name="from")
    until: Annotated[_TIME, msgspec.Meta(
        description="Only entries committed at or before this RFC 3339 time.")] | None = msgspec.field(
        default=None, name="to")
    metadata: dict[str, str] = {}

    def __post_init__(self) -> None:
        for name, value in (("from", self.since), ("to", self.until)):
            if value is not None:
                try:
                    parse_time(value)
                except ValueError:
                    raise ValueError(f"not a real RFC 3339 date-time - at `$.{name}`") from None
        check_metadata_filters(self.metadata)

    def entry_filter(self) -> store.EntryFilter:
        return store.EntryFilter(
            metadata=self.metadata, kind=self.kind,
            since=parse_time(self.since) if self.since is not None else None,
            until=parse_time(self.until) if self.until is not None else None,
        )


def check_metadata_filters(filters: dict[str, str]) -> None:
    """Each filter within metadata's own limits (a key a transfer's metadata could hold, a value it
    could have), and at most SEARCH_METADATA_FILTERS_MAX of them; the error names the parameter."""
    if len(filters) > schemas.SEARCH_METADATA_FILTERS_MAX:
        raise ValueError(f"at most {schemas.SEARCH_METADATA_FILTERS_MAX} metadata filters - at `$.{METADATA_PREFIX}`")
    for key, value in filters.items():
        shown = f"$.{METADATA_PREFIX}.{key[:schemas.METADATA_KEY_CHARS_MAX]}"
        if not 1 <= len(key) <= schemas.METADATA_KEY_CHARS_MAX or "\x00" in key:
            raise ValueError(f"a metadata key is 1..{schemas.METADATA_KEY_CHARS_MAX} characters, no NUL - at `{shown}`")
        if len(value) > schemas.METADATA_VALUE_CHARS_MAX or "\x00" in value:
            raise ValueError(f"a metadata value is at most {schemas.METADATA_VALUE_CHARS_MAX} characters,"
                             f" no NUL - at `{shown}`")


class StatementSearchQuery(SearchQuery, forbid_unknown_fields=True):
    reference: Annotated[schemas.Reference, msgspec.Meta(description="Only entries with exactly this reference.")] | None = None


class VendorSearchQuery(SearchQuery, forbid_unknown_fields=True):
    order: Annotated[Literal["asc", "desc"], msgspec.Meta(
        description="`desc`: newest first (a console's live list); `next` then pages further back.")] = "asc"


class TransfersQuery(SearchQuery, forbid_unknown_fields=True):
    account_id: Annotated[uuid.UUID, msgspec.Meta(description="Only entries with a posting on this account.")] | None = None


async def list_transfers(services, call: Call) -> web.Response:
    """Entries of the whole journal (or of one account) that pass the filters, oldest first, each
    as `GET /v1/transfers/{id}` shows it."""
    query: TransfersQuery = call.query
    async with services.pool.connection() as conn:
        entries = await store.search_entries(
            conn, query.entry_filter(), account_id=query.account_id, after=decode_cursor(query.after), limit=query.limit,
        )
    next_cursor = encode_cursor(entries[-1].position) if len(entries) == query.limit else None
    return json_response(schemas.TransferPage(items=[schemas.transfer_from_entry(e) for e in entries], next=next_cursor))
