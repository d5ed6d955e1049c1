"""The auditor's reads (one snapshot, as the auditor role) and the signed heads it records."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from psycopg import sql
from psycopg.types.string import TextLoader

from ledger import controls, domain
from ledger.store.base import AUDITOR_ROLE
from ledger.store.journal import _ENTRIES
from schemas import JournalEntry


# ---- audit ----------------------------------------------------------------------------------
# Reads of the auditor (run as AUDITOR_ROLE inside one snapshot), the signed heads it
# records, and the bulk append of `ledger.seed`, which bypasses the API as the migration role.

# Rows the audit's server-side cursor fetches per round trip: enough to hide the latency,
# small enough that memory does not grow with the journal.
AUDIT_FETCH_ROWS = 5_000

async def use_auditor_role(conn) -> None:
    """Whatever the login, the audit holds only the auditor's privileges: it can read, not write."""
    await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(AUDITOR_ROLE)))


async def begin_snapshot(conn, begin_statement: str) -> None:
    """Switch to the auditor role, then open the read-only snapshot (`dialect.snapshot_begin()`)."""
    await use_auditor_role(conn)
    await conn.execute(begin_statement)


async def account_kinds(conn) -> dict[uuid.UUID, tuple[str, str]]:
    """Every account's (kind, currency): what the audit needs to judge a balance."""
    rows = await (await conn.execute("SELECT id, kind, currency FROM accounts")).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


async def account_controls(conn) -> dict[uuid.UUID, controls.Controls]:
    """Every account's controls in force, as the write side keeps them (compared with the replay's)."""
    rows = await (await conn.execute("SELECT id, status, min_balance, max_balance FROM accounts")).fetchall()
    return {row[0]: controls.Controls(row[1], row[2], row[3]) for row in rows}


async def controls_up_to(conn, position: int) -> dict[uuid.UUID, controls.Controls]:
    """The controls the last account entry at or before `position` set, per account it names: the
    trusted start of `ledger audit --from` (journal_account_entries)."""
    rows = await (await conn.execute(
        "SELECT j.account_id, j.account_status, j.min_balance, j.max_balance FROM journal j"
        " WHERE j.kind = 'account' AND j.position <= %s AND j.position = (SELECT max(k.position) FROM journal k"
        " WHERE k.kind = 'account' AND k.account_id = j.account_id AND k.position <= %s)",
        (position, position),
    )).fetchall()
    return {row[0]: controls.Controls(row[1], row[2], row[3]) for row in rows}


async def stored_hash(conn, position: int) -> str | None:
    row = await (await conn.execute("SELECT hash FROM journal WHERE position = %s", (position,))).fetchone()
    return row[0] if row else None


async def balances_from_postings(conn, position: int) -> dict[uuid.UUID, int]:
    """Balances implied by the postings up to `position`: the trusted start of `ledger audit --from`."""
    rows = await (
        await conn.execute(
            "SELECT account_id, sum(amount)::INT8 FROM postings WHERE position <= %s GROUP BY account_id", (position,)
        )
    ).fetchall()
    return dict(rows)


# An entry as the audit reads it: a plain tuple of the stored values in `AUDITED_COLUMNS` order,
# UUIDs as text, the metadata decoded and the timestamp in the journal's form (`audit.entries`
# makes the hashed form and the entry of it). The columns are the entry's own fields but its
# postings, in its order, then each posting's account, amount and stored balance after: what
# `store.journal._ENTRIES` selects, checked against it when a cursor reads.
AuditedRow = tuple
POSTING_COLUMNS = ("account_ids", "amounts", "balances_after")
AUDITED_COLUMNS = tuple(name for name in JournalEntry.__struct_fields__ if name != "postings") + POSTING_COLUMNS


async def open_shared_snapshot(conn, dialect) -> str:
    """As the auditor, open the audit's read-only snapshot; returns the token with which other
    connections join it (`join_snapshot`), so worker processes read what the audit reads."""
    if dialect.snapshot_token_first:
        await use_auditor_role(conn)
        token = (await (await conn.execute(dialect.snapshot_token())).fetchone())[0]
        for statement in dialect.snapshot_join(token):
            await conn.execute(statement)
        return token
    await begin_snapshot(conn, dialect.snapshot_begin())
    return (await (await conn.execute(dialect.snapshot_token())).fetchone())[0]


async def join_shared_snapshot(conn, dialect, token: str) -> None:
    """On another asynchronous connection of the audit: the auditor's role, then its snapshot."""
    await use_auditor_role(conn)
    for statement in dialect.snapshot_join(token):
        await conn.execute(statement)


def join_snapshot(conn, dialect, token: str) -> None:
    """On a worker's (synchronous) connection: the auditor's role, then the audit's snapshot."""
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(AUDITOR_ROLE)))
    for statement in dialect.snapshot_join(token):
        conn.execute(statement)


async def last_entry_position(conn) -> int:
    """The highest position in the journal (0 when empty), whatever journal_head says."""
    row = await (await conn.execute("SELECT max(position) FROM journal")).fetchone()
    return row[0] or 0


_AUDITED_ENTRIES = f"{_ENTRIES} WHERE j.position > %s AND j.position <= %s ORDER BY j.position"


async def stream_entries(conn, after: int, upto: int) -> AsyncIterator[list[AuditedRow]]:
    """The entries in positions (after, upto] in position order, in pages of at most
    `AUDIT_FETCH_ROWS`, through a server-side cursor: the audit rehashes exactly what is stored.

    The rows come in text form, and UUIDs, JSONB and timestamps stay text: parsing them into
    objects was most of the audit's time (docs/audit.md, "`ledger audit`")."""
    await conn.execute("SET TIME ZONE 'UTC'")  # the timestamps' text is then the journal's own, in UTC
    async with conn.cursor(name="audit_journal", binary=False, row_factory=_audited_row) as cursor:
        _text_loaders(cursor)
        await cursor.execute(_AUDITED_ENTRIES, (after, upto))
        while entries := await cursor.fetchmany(AUDIT_FETCH_ROWS):
            yield entries


def entries_between(conn, after: int, upto: int) -> list[AuditedRow]:
    """`stream_entries` on a worker's synchronous connection, for one bounded range at once."""
    conn.execute("SET TIME ZONE 'UTC'")
    rows: list[AuditedRow] = []
    with conn.cursor(name="audit_journal_range", binary=False, row_factory=_audited_row) as cursor:
        _text_loaders(cursor)
        cursor.execute(_AUDITED_ENTRIES, (after, upto))
        while page := cursor.fetchmany(AUDIT_FETCH_ROWS):
            rows += page
    return rows


def _text_loaders(cursor) -> None:
    for type_name in ("uuid", "jsonb", "timestamptz"):
        cursor.adapters.register_loader(type_name, TextLoader)


def _audited_row(cursor) -> Callable[[Sequence], AuditedRow]:
    """A psycopg row factory for the rows of `_ENTRIES` in text form (UUIDs, JSONB and timestamps
    left as text): only the metadata and the timestamp are converted, as `store.journal._entry_row`
    converts them."""
    assert tuple(column.name for column in cursor.description) == AUDITED_COLUMNS, "the audit reads _ENTRIES' columns"
    metadata, committed_at = AUDITED_COLUMNS.index("metadata"), AUDITED_COLUMNS.index("committed_at")

    def make(values: Sequence) -> AuditedRow:
        row = list(values)
        row[metadata] = {} if row[metadata] == "{}" else json.loads(row[metadata])
        row[committed_at] = _journal_timestamp(row[committed_at])
        return tuple(row)

    return make


# The text of a TIMESTAMPTZ in UTC: "2026-11-26 14:35:53.37418+00", the fraction without its
# trailing zeros (and absent when zero).
_UTC_TEXT_SUFFIX = "+00"
_SECONDS_CHARS = len("2026-11-26 14:35:53")


def _journal_timestamp(text: str) -> str:
    """The journal's form of a timestamp's text in UTC (what `domain.format_timestamp` makes of
    the datetime), built from the characters; any other shape takes the datetime path."""
    whole, dot, fraction = text[:-len(_UTC_TEXT_SUFFIX)].partition(".")
    if not text.endswith(_UTC_TEXT_SUFFIX) or len(whole) != _SECONDS_CHARS or whole[10] != " " or len(fraction) > 6:
        return domain.format_timestamp(dt.datetime.fromisoformat(text))
    return f"{whole[:10]}T{whole[11:]}.{fraction:0<6}Z"


async def refund_originals(conn, after: int) -> AsyncIterator[tuple]:
    """For each refund after `after`, in position order: (its position, then the position, kind,
    from and to accounts and amount of the entry it names, all None when there is none)."""
    async with conn.cursor(name="audit_refunds") as cursor:
        await cursor.execute(
            "SELECT r.position, o.position, o.kind, o.from_account_id, o.to_account_id, o.amount"
            " FROM journal r LEFT JOIN journal o ON o.transfer_id = r.refund_of"
            " WHERE r.position > %s AND (r.kind = 'refund' OR r.refund_of IS NOT NULL) ORDER BY r.position",
            (after,),
        )
        while rows := await cursor.fetchmany(AUDIT_FETCH_ROWS):
            for row in rows:
                yield row


async def refunded_up_to(conn, position: int) -> dict[uuid.UUID, tuple[int, int]]:
    """original -> (its amount, refunded by entries up to `position`): the trusted start of `--from`."""
    rows = await (
        await conn.execute(
            "SELECT r.refund_of, o.amount, sum(r.amount)::INT8 FROM journal r JOIN journal o ON o.transfer_id = r.refund_of"
            " WHERE r.kind = 'refund' AND r.position <= %s GROUP BY r.refund_of, o.amount",
            (position,),
        )
    ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


async def refund_totals(conn) -> dict[uuid.UUID, int]:
    rows = await (await conn.execute("SELECT transfer_id, refunded FROM refund_totals")).fetchall()
    return dict(rows)


async def write_model_balances(conn) -> dict[uuid.UUID, int]:
    rows = await (await conn.execute("SELECT account_id, balance FROM balances")).fetchall()
    return dict(rows)


async def first_orphan_posting(conn, after: int) -> int | None:
    """The lowest position after `after` that has postings but no journal entry."""
    row = await (
        await conn.execute(
            "SELECT min(p.position) FROM postings p WHERE p.position > %s"
            " AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.position = p.position)",
            (after,),
        )
    ).fetchone()
    return row[0]


async def insert_signed_head(
    conn, *, position: int, digest: str, public_key: str, signature: str, signed_at: dt.datetime
) -> None:
    """Keep the first signature of a position: the table (named for the `ledger checkpoint` file)
    is append-only for the auditor too."""
    await conn.execute(
        "INSERT INTO signed_checkpoints (position, hash, public_key, signature, signed_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (position) DO NOTHING",
        (position, digest, public_key, signature, signed_at),
    )


