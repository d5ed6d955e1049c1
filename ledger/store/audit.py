"""The auditor's reads (inside one snapshot, as the auditor role) and the signed checkpoints it records."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

from psycopg import sql

import schemas
from ledger.store.base import AUDITOR_ROLE
from ledger.store.journal import _ENTRIES, _audited_entry_row


# ---- audit ----------------------------------------------------------------------------------
# Reads of the auditor (run as AUDITOR_ROLE inside one snapshot), the signed checkpoints it
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


async def stream_entries(conn, after: int) -> AsyncIterator[tuple[schemas.JournalEntry, list[int]]]:
    """The entries after `after` in position order, each with its postings' stored balances after,
    through a server-side cursor: the audit rehashes exactly what is stored, and one cursor keeps
    the stream in position order."""
    async with conn.cursor(name="audit_journal", binary=True, row_factory=_audited_entry_row) as cursor:
        await cursor.execute(f"{_ENTRIES} WHERE j.position > %s ORDER BY j.position", (after,))
        while entries := await cursor.fetchmany(AUDIT_FETCH_ROWS):
            for entry in entries:
                yield entry


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


async def insert_signed_checkpoint(
    conn, *, position: int, digest: str, public_key: str, signature: str, signed_at: dt.datetime
) -> None:
    """Keep the first signature of a position: the table is append-only for the auditor too."""
    await conn.execute(
        "INSERT INTO signed_checkpoints (position, hash, public_key, signature, signed_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (position) DO NOTHING",
        (position, digest, public_key, signature, signed_at),
    )


