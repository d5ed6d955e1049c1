"""Every SQL statement of the read models (projections), in the PostgreSQL/CockroachDB subset.

The projector writes here; the API's vendor routes read here. The projector's cursor (its row in
`projector_checkpoint`) is moved in the same transaction as the rows it covers, so "position N is
in the projection" is exact.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

from psycopg.rows import dict_row, kwargs_row

import schemas
from ledger import domain, store

DEFAULT_NAME = "main"


async def cursor(conn, name: str = DEFAULT_NAME) -> int:
    """How far the read models go: the projector's cursor (0 before its first step)."""
    row = await (await conn.execute("SELECT position FROM projector_checkpoint WHERE name = %s", (name,))).fetchone()
    return row[0] if row else 0


async def lock_cursor(conn, name: str, *, now: dt.datetime) -> int:
    """The cursor, its row created if missing and locked until the transaction ends: whoever
    applies entries holds it, so two projector instances take turns instead of both applying."""
    await conn.execute(
        "INSERT INTO projector_checkpoint (name, position, updated_at) VALUES (%s, 0, %s) ON CONFLICT (name) DO NOTHING",
        (name, now),
    )
    row = await (
        await conn.execute("SELECT position FROM projector_checkpoint WHERE name = %s FOR UPDATE", (name,))
    ).fetchone()
    return row[0]


async def apply_entries(conn, entries: list[schemas.JournalEntry], *, name: str, projected_at: dt.datetime) -> None:
    """Apply contiguous entries (the caller guarantees order and no gaps) and move the cursor."""
    assert entries
    deltas: dict[uuid.UUID, tuple[str, int]] = {}
    for entry in entries:
        for posting in entry.postings:
            currency, total = deltas.get(posting.account_id, (entry.currency, 0))
            deltas[posting.account_id] = (currency, total + posting.amount)
    last = entries[-1].position
    ids = list(deltas)
    await conn.execute(
        "INSERT INTO projected_balances (account_id, currency, balance, position)"
        " SELECT i, c, d, %s FROM unnest(%s::UUID[], %s::TEXT[], %s::INT8[]) AS v (i, c, d)"
        " ON CONFLICT (account_id) DO UPDATE SET balance = projected_balances.balance + excluded.balance,"
        " position = excluded.position",
        (last, ids, [deltas[i][0] for i in ids], [deltas[i][1] for i in ids]),
    )
    vendors = await _vendor_accounts(conn, list({e.to_account_id for e in entries}))
    # A hold, a void and an expiry name the vendor as the hold's other party but pay it nothing.
    rows = [e for e in entries if e.to_account_id in vendors and e.kind in domain.PAYMENT_KINDS]
    if rows:
        await conn.execute(
            "INSERT INTO verifications (vendor_account_id, position, transfer_id, payer_account_id, amount,"
            " currency, reference, committed_at, hash, projected_at)"
            " SELECT v, p, t, f, a, c, r, ca, h, %s FROM unnest(%s::UUID[], %s::INT8[], %s::UUID[], %s::UUID[],"
            " %s::INT8[], %s::TEXT[], %s::TEXT[], %s::TEXT[], %s::TEXT[]) AS x (v, p, t, f, a, c, r, ca, h)"
            " ON CONFLICT (transfer_id) DO NOTHING",
            (
                projected_at,
                [e.to_account_id for e in rows],
                [e.position for e in rows],
                [e.transfer_id for e in rows],
                [e.from_account_id for e in rows],
                [e.amount for e in rows],
                [e.currency for e in rows],
                [e.reference for e in rows],
                [e.committed_at for e in rows],
                [e.hash for e in rows],
            ),
        )
    await _add_refunds(conn, entries)
    await conn.execute(
        "INSERT INTO projector_checkpoint (name, position, updated_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        (name, last, projected_at),
    )


async def _add_refunds(conn, entries: list[schemas.JournalEntry]) -> None:
    """Add each refund to its original's `refunded_amount`. Entries are applied once (under the
    locked cursor) and after their originals (position order), so the sum is exact."""
    refunded: dict[uuid.UUID, int] = {}
    for entry in entries:
        if entry.kind == "refund" and entry.refund_of is not None:
            refunded[entry.refund_of] = refunded.get(entry.refund_of, 0) + entry.amount
    if refunded:
        originals = list(refunded)
        await conn.execute(
            "UPDATE verifications SET refunded_amount = verifications.refunded_amount + r.amount"
            " FROM unnest(%s::UUID[], %s::INT8[]) AS r (transfer_id, amount)"
            " WHERE verifications.transfer_id = r.transfer_id",
            (originals, [refunded[t] for t in originals]),
        )


async def _vendor_accounts(conn, account_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await (
        await conn.execute("SELECT id FROM accounts WHERE id = ANY(%s) AND kind = 'vendor'", (account_ids,))
    ).fetchall()
    return {row[0] for row in rows}


async def reset(conn, name: str = DEFAULT_NAME) -> None:
    """Drop every projected row and the cursor, for a rebuild from the journal."""
    await conn.execute("DELETE FROM verifications WHERE true")
    await conn.execute("DELETE FROM projected_balances WHERE true")
    await conn.execute("DELETE FROM projector_checkpoint WHERE name = %s", (name,))


# The columns of `schemas.Verification`, by name: rows are built straight into it.
_VERIFICATION_COLUMNS = (
    "v.transfer_id, v.vendor_account_id, v.payer_account_id, v.amount, v.currency, v.reference,"
    " v.committed_at, v.position, v.hash, 'verified' AS status, v.projected_at, v.refunded_amount"
)


async def verification(
    conn, vendor_account_id: uuid.UUID, transfer_id: uuid.UUID, name: str = DEFAULT_NAME
) -> tuple[int, schemas.Verification | None]:
    """The cursor and the verification (or None), in one statement so the header is exact for it."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT c.position AS projection_position, {_VERIFICATION_COLUMNS} FROM (SELECT %s::TEXT AS name) n"
            " LEFT JOIN projector_checkpoint c ON c.name = n.name"
            " LEFT JOIN verifications v ON v.vendor_account_id = %s AND v.transfer_id = %s",
            (name, vendor_account_id, transfer_id),
        )
        row = await cursor.fetchone()
    position = row.pop("projection_position") or 0
    return position, (schemas.Verification(**row) if row["transfer_id"] is not None else None)


async def verifications_page(
    conn, vendor_account_id: uuid.UUID, *, after: int, limit: int, name: str = DEFAULT_NAME,
    entry_filter: store.EntryFilter | None = None, newest_first: bool = False,
) -> tuple[int, list[schemas.Verification]]:
    """A page of the vendor's verifications up to the projection's cursor; with a search's
    filter, those whose journal entry passes it (`ledger.store.search`: a plain join, so the
    planner starts from the metadata's inverted index when it finds fewer rows). Oldest first,
    `after` is the last position already seen; newest first, the oldest seen (0: from the newest):
    either way one range of the primary key (vendor_account_id, position), read forwards or back."""
    cursor_position = await cursor(conn, name)
    if newest_first:
        below = min(after - 1, cursor_position) if after else cursor_position
        bounds, bound_params, order = "v.position <= %s", (below,), "DESC"
    else:
        bounds, bound_params, order = "v.position > %s AND v.position <= %s", (after, cursor_position), "ASC"
    if entry_filter is None or entry_filter == store.EntryFilter():
        page = await _verifications(
            conn, f"WHERE v.vendor_account_id = %s AND {bounds} ORDER BY v.position {order} LIMIT %s",
            (vendor_account_id, *bound_params, limit),
        )
        return cursor_position, page
    positions = await store.positions_of(conn, entry_filter)
    if positions.empty:
        return cursor_position, []
    where, params = store.search_conditions(entry_filter, positions, "v.position")
    page = await store.fetch_planned(
        conn, kwargs_row(schemas.Verification),
        f"SELECT {_VERIFICATION_COLUMNS} FROM verifications v JOIN journal j ON j.position = v.position"
        f" WHERE v.vendor_account_id = %s AND {bounds}{where} ORDER BY v.position {order} LIMIT %s",
        (vendor_account_id, *bound_params, *params, limit),
    )
    return cursor_position, page


async def balances(conn) -> dict[uuid.UUID, int]:
    rows = await (await conn.execute("SELECT account_id, balance FROM projected_balances")).fetchall()
    return dict(rows)


async def verifications(conn) -> list[schemas.Verification]:
    """Every verification in position order (the rebuild test compares them)."""
    return await _verifications(conn, "ORDER BY v.position", ())


# Rows the audit's server-side cursor over the verifications fetches per round trip.
AUDIT_FETCH_ROWS = 5_000


async def stream_verifications(conn, after: int) -> AsyncIterator[schemas.Verification]:
    """Every verification after position `after` in position order, through a server-side cursor,
    so the audit walks them alongside the journal with bounded memory."""
    async with conn.cursor(name="audit_verifications", row_factory=kwargs_row(schemas.Verification)) as cursor:
        await cursor.execute(
            f"SELECT {_VERIFICATION_COLUMNS} FROM verifications v WHERE v.position > %s"
            " ORDER BY v.position, v.transfer_id",
            (after,),
        )
        while rows := await cursor.fetchmany(AUDIT_FETCH_ROWS):
            for row in rows:
                yield row


async def _verifications(conn, where: str, params: tuple) -> list[schemas.Verification]:
    async with conn.cursor(row_factory=kwargs_row(schemas.Verification)) as cursor:
        await cursor.execute(f"SELECT {_VERIFICATION_COLUMNS} FROM verifications v {where}", params)
        return await cursor.fetchall()
