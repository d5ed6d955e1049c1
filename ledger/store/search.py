"""Searches of the journal by metadata, kind and time: statements, entry lists, vendor-list filters.

Which index answers what (migration 0018 and `ledger.dialect.metadata_index_ddl`):
- `metadata.KEY=VALUE` filters are one containment test, `j.metadata @> {...}`, answered by the
  inverted (GIN) index on `journal.metadata`: an order id that matches one entry in a million reads
  that entry, and one that matches nothing reads nothing, however many entries the account has.
  The query is written as a plain join so the planner may instead walk the account's postings
  when the filter matches much of the journal (a filter such as `channel=web`).
- `from`/`to` become position bounds, each one lookup on `journal_by_time`: `committed_at` never
  decreases along positions (`domain.stamp_after`), so the entries committed in [from, to] are
  exactly a range of positions, and every other index keeps working on that range. They are read
  first and the search is planned for its own values (`fetch_planned`), so the planner weighs
  the range against the metadata index.
- `kind` other than `transfer` reads `journal_by_kind`, a partial index that transfers (nearly
  every entry) never enter, so it costs the bulk write path nothing.
- `kind=account` (control changes: no postings) reads `journal_account_entries`, partial likewise.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from psycopg.rows import kwargs_row

import schemas
from ledger.store.accounts import _statement_item
from ledger.store.base import _encode_json, fetch_all
from ledger.store.journal import _ENTRIES, _entry_row, entries_by_positions


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """What a search keeps: entries whose metadata holds every pair of `metadata`, of `kind`,
    committed in [since, until] (each bound optional)."""

    metadata: dict[str, str] = field(default_factory=dict)
    kind: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @property
    def selective(self) -> bool:
        """Whether an index other than the account's postings may find the entries sooner."""
        return bool(self.metadata) or self.kind not in (None, "transfer")


# The first position committed at or after a time, and the last at or before one: one lookup each
# on journal_by_time. NULL when there is none.
_TIME_BOUNDS = (
    "SELECT (SELECT t.position FROM journal t WHERE t.committed_at >= %s ORDER BY t.committed_at, t.position LIMIT 1),"
    " (SELECT t.position FROM journal t WHERE t.committed_at <= %s"
    " ORDER BY t.committed_at DESC, t.position DESC LIMIT 1)"
)
_TIME_MIN = dt.datetime(1, 1, 2, tzinfo=dt.timezone.utc)  # before any entry, in every time zone
_TIME_MAX = dt.datetime(9999, 12, 30, tzinfo=dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class Positions:
    """The positions a search may return: `first`..`last`, or none at all (`empty`)."""

    first: int = 1
    last: int | None = None  # no upper bound
    empty: bool = False


async def positions_of(conn, entry_filter: EntryFilter) -> Positions:
    """The filter's time bounds as positions, read before the search itself: the planner then
    knows how much of the journal they keep (a bound it cannot see, it guesses at a third) and
    picks the metadata index or the position range accordingly. A statement of its own, and
    still one consistent answer: entries never change and positions only grow, so every position
    these bounds keep reads the same in the search's snapshot as in this one."""
    if entry_filter.since is None and entry_filter.until is None:
        return Positions()
    since, until = entry_filter.since or _TIME_MIN, entry_filter.until or _TIME_MAX
    first, last = await (await conn.execute(_TIME_BOUNDS, (since, until), prepare=False)).fetchone()
    if first is None or last is None or first > last:
        return Positions(empty=True)
    return Positions(first, last if entry_filter.until is not None else None)


def search_conditions(entry_filter: EntryFilter, positions: Positions, position: str) -> tuple[str, list]:
    """The filter as ` AND ...` conditions on `position` (a column naming the entry's position)
    and on the journal row `j`, with their parameters in order."""
    conditions, params = [], []
    if positions.first > 1:
        conditions.append(f"{position} >= %s")
        params.append(positions.first)
    if positions.last is not None:
        conditions.append(f"{position} <= %s")
        params.append(positions.last)
    if entry_filter.metadata:
        conditions.append("j.metadata @> %s::JSONB")
        params.append(_encode_json(entry_filter.metadata).decode())
    if entry_filter.kind is not None:
        conditions.append("j.kind = %s")
        params.append(entry_filter.kind)
        if entry_filter.kind != "transfer":
            # Said as a constant too, so that the partial index's predicate is provably implied.
            conditions.append("j.kind <> 'transfer'")
    return "".join(f" AND {c}" for c in conditions), params


async def fetch_planned(conn, row_factory, query: str, params) -> list:
    """`fetch_all`, planned for these parameters every time (never a prepared, generic plan): a
    generic plan cannot know how many entries a containment or a position range keeps, and would
    pick one index for every search, where a custom plan costs about a tenth of a millisecond."""
    async with conn.cursor(row_factory=row_factory) as cursor:
        await cursor.execute(query, params, prepare=False)
        return await cursor.fetchall()


_ITEM_COLUMNS = (
    "p.position, j.transfer_id, j.kind, p.amount, p.balance_after,"
    " CASE WHEN j.from_account_id = p.account_id THEN j.to_account_id ELSE j.from_account_id END"
    " AS counterparty_account_id, j.reference, j.committed_at"
)
# Driven by the account's postings (postings_by_account, or postings_by_reference with a
# reference), each entry looked up by position: the LATERAL ... LIMIT 1 keeps the plan a nested
# loop that stops at the page's end (see `accounts.statement_query`).
_BY_POSTINGS = (
    f"SELECT {_ITEM_COLUMNS} FROM postings p JOIN LATERAL (SELECT e.transfer_id, e.kind, e.from_account_id,"
    " e.to_account_id, e.reference, e.committed_at FROM journal e WHERE e.position = p.position LIMIT 1)"
    " j ON true WHERE p.account_id = %s AND p.position > %s{where} ORDER BY p.account_id,{order} p.position LIMIT %s"
)
# A plain join, for selective filters: the planner starts from the index that finds fewest rows
# (the metadata's inverted index, journal_by_kind) and probes the account's posting by its key.
_BY_ENTRIES = (
    f"SELECT {_ITEM_COLUMNS} FROM journal j JOIN postings p ON p.position = j.position AND p.account_id = %s"
    " WHERE j.position > %s{where} ORDER BY j.position LIMIT %s"
)
# Control changes of the account (kind `account`, no postings): the balance shown is the one in
# force at that position, the counterparty is the account itself.
_ACCOUNT_ENTRIES = (
    "SELECT j.position, j.transfer_id, j.kind, 0::INT8 AS amount, coalesce((SELECT q.balance_after FROM postings q"
    " WHERE q.account_id = j.account_id AND q.position <= j.position ORDER BY q.account_id DESC, q.position DESC"
    " LIMIT 1), 0) AS balance_after, j.account_id AS counterparty_account_id, j.reference, j.committed_at"
    " FROM journal j WHERE j.account_id = %s AND j.position > %s{where} ORDER BY j.account_id, j.position LIMIT %s"
)


def statement_search_query(
    account_id: uuid.UUID, entry_filter: EntryFilter, *, after: int, limit: int, reference: str | None,
    positions: Positions = Positions(),
) -> tuple[str, tuple]:
    """The statement of `accounts.statement_query` with the search's filters, on the index that
    answers them soonest (see the module's note)."""
    if entry_filter.kind == "account" or entry_filter.selective:
        where, params = search_conditions(entry_filter, positions, "j.position")
        if reference is not None:
            where, params = where + " AND j.reference = %s", [*params, reference]
        query = _ACCOUNT_ENTRIES if entry_filter.kind == "account" else _BY_ENTRIES
        return query.format(where=where), (account_id, after, *params, limit)
    where, params = search_conditions(entry_filter, positions, "p.position")
    if reference is None:
        return _BY_POSTINGS.format(where=where, order=""), (account_id, after, *params, limit)
    query = _BY_POSTINGS.format(where=" AND p.reference = %s" + where, order=" p.reference,")
    return query, (account_id, after, reference, *params, limit)


async def statement_search(
    conn, account_id: uuid.UUID, entry_filter: EntryFilter, *, after: int, limit: int, reference: str | None = None
) -> list[schemas.StatementItem]:
    positions = await positions_of(conn, entry_filter)
    if positions.empty:
        return []
    query, params = statement_search_query(account_id, entry_filter, after=after, limit=limit, reference=reference,
                                           positions=positions)
    # A plain statement keeps its prepared plan: without filters there is only one good one.
    fetch = fetch_all if entry_filter == EntryFilter() else fetch_planned
    return await fetch(conn, kwargs_row(_statement_item), query, params)


def entries_search_query(
    entry_filter: EntryFilter, *, after: int, limit: int, positions: Positions = Positions()
) -> tuple[str, tuple]:
    """The entries of the whole journal that pass the filter, oldest first, as `_ENTRIES` rows."""
    where, params = search_conditions(entry_filter, positions, "j.position")
    return f"{_ENTRIES} WHERE j.position > %s{where} ORDER BY j.position LIMIT %s", (after, *params, limit)


async def search_entries(
    conn, entry_filter: EntryFilter, *, account_id: uuid.UUID | None, after: int, limit: int
) -> list[schemas.JournalEntry]:
    """Entries that pass the filter (and touch `account_id`, when given: as its statement lists
    them), oldest first."""
    if account_id is not None:
        items = await statement_search(conn, account_id, entry_filter, after=after, limit=limit)
        return await entries_by_positions(conn, [item.position for item in items]) if items else []
    positions = await positions_of(conn, entry_filter)
    if positions.empty:
        return []
    query, params = entries_search_query(entry_filter, after=after, limit=limit, positions=positions)
    return await fetch_planned(conn, _entry_row, query, params)
