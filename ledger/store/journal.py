"""The journal: the group commit's write path, holds, entries read back, the publisher cursor.

Also the idempotency keys' upkeep and the seeder's bulk path.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence

import msgspec
from psycopg.rows import args_row, class_row, namedtuple_row
from psycopg.types.json import Jsonb

import schemas
from ledger import domain
from ledger.store.base import fetch_all, fetch_one, _encode_json, _numbers, _texts
from ledger.store.accounts import AccountRow, insert_account


# ---- the journal write path -----------------------------------------------------------------

# Every writer of the journal takes the head row first: it orders writers and makes positions gap-free.
# clock_timestamp(): the database's clock when the lock is held (after any wait for it), which a
# batch's own clock is checked against (`committer.check_clock`).
_HEAD_FOR_UPDATE = "SELECT position, hash, committed_at, clock_timestamp() FROM journal_head WHERE id = 1 FOR UPDATE"


async def read_batch_state(
    conn,
    *,
    batch_lock: str | None,
    account_ids: list[uuid.UUID],
    principal_ids: list[uuid.UUID],
    keys: list[str],
    refunded_ids: list[uuid.UUID] = (),
    hold_ids: list[uuid.UUID] = (),
) -> domain.BatchState:
    """Lock the journal head, then read the batch's accounts and stored keys. The statements are
    sent before any result is awaited, so in pipeline mode they cost one round trip; the head
    lock comes first, so it orders batches across processes. `batch_lock` is the dialect's
    statement that waits for the previous batch before any snapshot is taken."""
    if batch_lock:
        await conn.execute(batch_lock)
    head_cursor = await conn.execute(_HEAD_FOR_UPDATE)
    accounts_cursor = await conn.cursor(row_factory=class_row(domain.AccountState)).execute(
        "SELECT a.id, a.kind, a.currency, a.owner_id, b.balance FROM accounts a"
        " JOIN balances b ON b.account_id = a.id WHERE a.id = ANY(%s::UUID[])",
        (_numbers(account_ids),),
    )
    keys_cursor = await conn.cursor(row_factory=namedtuple_row).execute(
        "SELECT i.principal_id, i.key, i.request_hash, i.position FROM idempotency i"
        " JOIN unnest(%s::UUID[], %s::TEXT[]) AS k (principal_id, key)"
        " ON i.principal_id = k.principal_id AND i.key = k.key",
        (_numbers(principal_ids), _texts(keys)),
    )
    refunds_cursor = None
    if refunded_ids:
        refunds_cursor = await conn.execute(
            "SELECT transfer_id, refunded FROM refund_totals WHERE transfer_id = ANY(%s::UUID[])",
            (_numbers(refunded_ids),),
        )
    holds_cursor = None
    if hold_ids:
        holds_cursor = await conn.cursor(row_factory=class_row(domain.HoldState)).execute(
            f"SELECT {_HOLD_COLUMNS} FROM holds h WHERE h.id = ANY(%s::UUID[])", (_numbers(hold_ids),)
        )
    position, digest, committed_at, database_now = await head_cursor.fetchone()
    accounts = {account.id: account for account in await accounts_cursor.fetchall()}
    stored = {(k.principal_id, k.key): (bytes(k.request_hash), k.position) for k in await keys_cursor.fetchall()}
    refunded = dict(await refunds_cursor.fetchall()) if refunds_cursor is not None else {}
    holds = {hold.id: hold for hold in await holds_cursor.fetchall()} if holds_cursor is not None else {}
    return domain.BatchState(position, digest, accounts, stored, refunded, committed_at, holds, database_now)


_HOLD_COLUMNS = (
    "h.id, h.from_account_id, h.to_account_id, h.amount, h.currency, h.reference, h.metadata, h.status,"
    " h.captured_amount, h.expires_at, h.position, h.closed_position, h.transfer_id"
)


async def write_batch(conn, result: domain.BatchResult, *, committed_at: dt.datetime) -> None:
    """Append the batch's entries in a few multi-row statements and move each balance once."""
    entries = result.entries
    assert entries, "an empty batch writes nothing"
    await conn.execute(
        "INSERT INTO journal (position, transfer_id, from_account_id, to_account_id, amount, currency,"
        " reference, metadata, committed_at, prev_hash, hash, kind, refund_of, hold_id)"
        " SELECT p, t, f, o, a, c, r, m::JSONB, %s, ph, h, k, ro, ho FROM unnest("
        "%s::INT8[], %s::UUID[], %s::UUID[], %s::UUID[], %s::INT8[], %s::TEXT[], %s::TEXT[], %s::TEXT[],"
        " %s::TEXT[], %s::TEXT[], %s::TEXT[], %s::UUID[], %s::UUID[]) AS e (p, t, f, o, a, c, r, m, ph, h, k, ro, ho)",
        (
            committed_at,
            _numbers([e.position for e in entries]),
            _numbers([e.transfer_id for e in entries]),
            _numbers([e.from_account_id for e in entries]),
            _numbers([e.to_account_id for e in entries]),
            _numbers([e.amount for e in entries]),
            _texts([e.currency for e in entries]),
            _texts([e.reference for e in entries]),
            _texts([_encode_json(e.metadata).decode() for e in entries]),
            _numbers([e.prev_hash for e in entries]),
            _numbers([e.hash for e in entries]),
            _numbers([e.kind for e in entries]),
            _numbers([e.refund_of for e in entries]),
            _numbers([e.hold_id for e in entries]),
        ),
    )
    postings = _postings_rows(result)
    await conn.execute(
        "INSERT INTO postings (position, account_id, amount, balance_after, reference)"
        " SELECT * FROM unnest(%s::INT8[], %s::UUID[], %s::INT8[], %s::INT8[], %s::TEXT[])",
        (*(_numbers([p[i] for p in postings]) for i in range(4)), _texts([p[4] for p in postings])),
    )
    await conn.execute(
        "INSERT INTO idempotency (principal_id, key, request_hash, position)"
        " SELECT * FROM unnest(%s::UUID[], %s::TEXT[], %s::BYTEA[], %s::INT8[])",
        (
            _numbers([k[0] for k in result.new_keys]),
            _texts([k[1] for k in result.new_keys]),
            _texts(["\\x" + k[2].hex() for k in result.new_keys]),
            _numbers([k[3] for k in result.new_keys]),
        ),
    )
    await _move_balances_and_head(conn, result, committed_at=committed_at)


def _postings_rows(result: domain.BatchResult) -> list[tuple[int, uuid.UUID, int, int, str]]:
    """(position, account_id, amount, balance_after, reference) of every posting of the batch: the
    entry's reference is repeated on its postings for `postings_by_reference` (statements)."""
    return [
        (e.position, p.account_id, p.amount, after, e.reference)
        for e in result.entries
        for p, after in zip(e.postings, result.balances_after[e.position], strict=True)
    ]


async def _move_balances_and_head(conn, result: domain.BatchResult, *, committed_at: dt.datetime) -> None:
    """Move each touched balance once, the refunded totals, and the head to the batch's last entry."""
    last = result.entries[-1]
    touched = list(result.balance_deltas.items())
    await conn.execute(
        "UPDATE balances SET balance = balances.balance + d.delta, position = %s"
        " FROM unnest(%s::UUID[], %s::INT8[]) AS d (account_id, delta)"
        " WHERE balances.account_id = d.account_id",
        (last.position, _numbers([t[0] for t in touched]), _numbers([t[1] for t in touched])),
    )
    if result.refunded:
        refunded = list(result.refunded.items())
        await conn.execute(
            "INSERT INTO refund_totals (transfer_id, transfer_amount, refunded)"
            " SELECT * FROM unnest(%s::UUID[], %s::INT8[], %s::INT8[])"
            " ON CONFLICT (transfer_id) DO UPDATE SET refunded = excluded.refunded",
            (_numbers([r[0] for r in refunded]), _numbers([r[1][0] for r in refunded]),
             _numbers([r[1][1] for r in refunded])),
        )
    if result.holds:
        await _write_holds(conn, list(result.holds.values()))
    await conn.execute(
        "UPDATE journal_head SET position = %s, hash = %s, committed_at = %s WHERE id = 1",
        (last.position, last.hash, committed_at),
    )


async def _write_holds(conn, holds: list[domain.HoldState]) -> None:
    """Insert the holds placed in the batch and close those closed in it, in one statement. Only
    the closing columns change on conflict: what a hold is never changes once placed."""
    await conn.execute(
        "INSERT INTO holds (id, from_account_id, to_account_id, amount, currency, reference, metadata, status,"
        " captured_amount, expires_at, position, closed_position, transfer_id)"
        " SELECT i, f, t, a, c, r, m::JSONB, s, ca, e, p, cp, tr FROM unnest(%s::UUID[], %s::UUID[], %s::UUID[],"
        " %s::INT8[], %s::TEXT[], %s::TEXT[], %s::TEXT[], %s::TEXT[], %s::INT8[], %s::TIMESTAMPTZ[], %s::INT8[],"
        " %s::INT8[], %s::UUID[]) AS h (i, f, t, a, c, r, m, s, ca, e, p, cp, tr)"
        " ON CONFLICT (id) DO UPDATE SET status = excluded.status, captured_amount = excluded.captured_amount,"
        " closed_position = excluded.closed_position, transfer_id = excluded.transfer_id",
        (
            _numbers([h.id for h in holds]),
            _numbers([h.from_account_id for h in holds]),
            _numbers([h.to_account_id for h in holds]),
            _numbers([h.amount for h in holds]),
            _texts([h.currency for h in holds]),
            _texts([h.reference for h in holds]),
            _texts([json.dumps(h.metadata) for h in holds]),
            _texts([h.status for h in holds]),
            _numbers([h.captured_amount for h in holds]),
            _texts([h.expires_at.isoformat() for h in holds]),
            _numbers([h.position for h in holds]),
            _numbers([h.closed_position for h in holds]),
            _numbers([h.transfer_id for h in holds]),
        ),
    )


# ---- holds ----------------------------------------------------------------------------------


async def hold_by_id(conn, hold_id: uuid.UUID) -> domain.HoldState | None:
    return await fetch_one(
        conn, class_row(domain.HoldState), f"SELECT {_HOLD_COLUMNS} FROM holds h WHERE h.id = %s", (hold_id,)
    )


async def due_holds(conn, *, now: dt.datetime, limit: int) -> list[domain.HoldState]:
    """Up to `limit` pending holds whose `expires_at` has passed, soonest first (holds_due)."""
    return await fetch_all(
        conn, class_row(domain.HoldState),
        f"SELECT {_HOLD_COLUMNS} FROM holds h WHERE h.status = 'pending' AND h.expires_at <= %s"
        " ORDER BY h.status, h.expires_at LIMIT %s",
        (now, limit),
    )


async def ensure_holding_account(conn, currency: str) -> None:
    """The currency's holding account (a system account with a derived id), created on first use."""
    holding = AccountRow(domain.holding_account_id(currency), "system", currency, None, f"holding {currency}", None)
    stored, _ = await insert_account(conn, holding)
    assert (stored.kind, stored.currency) == ("system", currency), "the holding account id is taken"


async def expiry_lags_s(conn, hold_ids: list[uuid.UUID]) -> list[float]:
    """For each of these holds that expired: seconds from its `expires_at` to its expire entry's
    `committed_at` (what `tools.hold_bench` reports as the sweeper's lag)."""
    rows = await (await conn.execute(
        "SELECT extract(epoch FROM j.committed_at - h.expires_at)::FLOAT8 FROM holds h"
        " JOIN journal j ON j.position = h.closed_position WHERE h.status = 'expired' AND h.id = ANY(%s::UUID[])",
        (_numbers(hold_ids),),
    )).fetchall()
    return [row[0] for row in rows]


async def holds_for_audit(conn) -> list[domain.HoldState]:
    """Every hold, for the audit to compare with the holds it replays (bounded by the holds table)."""
    return await fetch_all(conn, class_row(domain.HoldState), f"SELECT {_HOLD_COLUMNS} FROM holds h ORDER BY h.position", ())


# ---- reading the journal --------------------------------------------------------------------

# Each entry with its postings in the order the write path sealed them (debit first), as the
# columns of `schemas.JournalEntry`: `_entry_row` builds the entry straight from them.
_ENTRIES = (
    "SELECT j.position, j.transfer_id, j.from_account_id, j.to_account_id, j.amount, j.currency, j.reference,"
    " j.metadata, j.committed_at, j.prev_hash, j.hash, j.kind, j.refund_of, j.hold_id, p.account_ids, p.amounts,"
    " p.balances_after FROM journal j"
    " LEFT JOIN LATERAL (SELECT array_agg(q.account_id ORDER BY q.amount, q.account_id) AS account_ids,"
    " array_agg(q.amount ORDER BY q.amount, q.account_id) AS amounts,"
    " array_agg(q.balance_after ORDER BY q.amount, q.account_id) AS balances_after"
    " FROM postings q WHERE q.position = j.position) p ON true"
)


_ENTRY_DEFAULTS = {
    spec.name: spec.default for spec in msgspec.structs.fields(schemas.JournalEntry) if spec.default is not msgspec.NODEFAULT
}


def _entry_row(cursor) -> Callable[[Sequence], schemas.JournalEntry]:
    """A psycopg row factory: the row of `_ENTRIES` as the one entry type. Only what the database
    stores differently is converted: the timestamp to its journal text, the postings from arrays."""
    names = [column.name for column in cursor.description]

    def make(values: Sequence) -> schemas.JournalEntry:
        row = dict(zip(names, values))
        row.pop("balances_after")
        for name, default in _ENTRY_DEFAULTS.items():
            if row[name] == default:
                # The struct's own default object: msgspec omits a default by identity when
                # encoding, and an export must leave out what the hash leaves out.
                del row[name]
        row["committed_at"] = domain.format_timestamp(row["committed_at"])
        row["postings"] = [schemas.Posting(*p) for p in zip(row.pop("account_ids") or (), row.pop("amounts") or ())]
        return schemas.JournalEntry(**row)

    return make


def _audited_entry_row(cursor) -> Callable[[Sequence], tuple[schemas.JournalEntry, list[int]]]:
    """As `_entry_row`, with the stored `balance_after` of each posting, in the postings' order."""
    make_entry = _entry_row(cursor)
    index = [column.name for column in cursor.description].index("balances_after")

    def make(values: Sequence) -> tuple[schemas.JournalEntry, list[int]]:
        return make_entry(values), list(values[index] or ())

    return make


async def _entries(conn, where: str, params: tuple) -> list[schemas.JournalEntry]:
    async with conn.cursor(row_factory=_entry_row) as cursor:
        await cursor.execute(f"{_ENTRIES} {where}", params)
        return await cursor.fetchall()


async def entries_by_positions(conn, positions: list[int]) -> list[schemas.JournalEntry]:
    return await _entries(conn, "WHERE j.position = ANY(%s) ORDER BY j.position", (positions,))


async def entry_by_transfer_id(conn, transfer_id: uuid.UUID) -> schemas.JournalEntry | None:
    entries = await _entries(conn, "WHERE j.transfer_id = %s", (transfer_id,))
    return entries[0] if entries else None


async def entries_after(conn, after: int, limit: int) -> list[schemas.JournalEntry]:
    return await _entries(conn, "WHERE j.position > %s ORDER BY j.position LIMIT %s", (after, limit))


async def journal_head(conn) -> schemas.JournalHead:
    return await fetch_one(
        conn, args_row(_journal_head), "SELECT position, hash, committed_at FROM journal_head WHERE id = 1"
    )


def _journal_head(position: int, digest: str, committed_at: dt.datetime | None) -> schemas.JournalHead:
    stamp = domain.format_timestamp(committed_at) if committed_at is not None else None
    return schemas.JournalHead(position=position, hash=digest, committed_at=stamp)


async def account_owners(conn, account_ids: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID | None]:
    rows = await (
        await conn.execute("SELECT id, owner_id FROM accounts WHERE id = ANY(%s)", (account_ids,))
    ).fetchall()
    return dict(rows)


# ---- the publisher cursor ---------------------------------------------------------------------
# The journal is the outbox: `publish_cursor.position` is the last position whose event JetStream
# acknowledged, with every position before it acknowledged too. It only ever moves forward, and
# only to a position that was published, so never past the head.


async def advance_publish_cursor(conn, *, first: int, last: int) -> int:
    """Move the cursor to `last` if it already reaches `first - 1` (the run first..last was
    published, so with it everything up to `last`); returns the cursor after the statement. A run
    that does not join the cursor (an earlier batch, perhaps another process's, is not yet
    acknowledged) leaves it where it is; `greatest` keeps it monotonic when two publishers
    advance over overlapping runs."""
    row = await (await conn.execute(
        "UPDATE publish_cursor SET position = greatest(position, %s), updated_at = now()"
        " WHERE id = 1 AND position >= %s RETURNING position",
        (last, first - 1),
    )).fetchone()
    if row is not None:
        return row[0]
    return (await publish_progress(conn))[0]


async def publish_progress(conn) -> tuple[int, int]:
    """(cursor, head): the entries after the cursor up to the head are not yet known published."""
    row = await (await conn.execute(
        "SELECT c.position, h.position FROM publish_cursor c, journal_head h WHERE c.id = 1 AND h.id = 1"
    )).fetchone()
    return row[0], row[1]


async def ping(conn) -> None:
    await conn.execute("SELECT 1")


async def server_version(conn) -> str:
    row = await (await conn.execute("SELECT version()")).fetchone()
    return row[0]


async def delete_idempotency_before(conn, *, before: dt.datetime, limit: int) -> int:
    """Forget up to `limit` idempotency keys stored before `before`; returns how many went."""
    cursor = await conn.execute(
        "DELETE FROM idempotency WHERE (principal_id, key) IN"
        " (SELECT principal_id, key FROM idempotency WHERE created_at < %s LIMIT %s)",
        (before, limit),
    )
    return cursor.rowcount


async def insert_accounts(conn, accounts: list[tuple[uuid.UUID, str, str, str]]) -> None:
    """Bulk-create (id, kind, currency, name) accounts with no owner, and their zero balances."""
    columns = [list(column) for column in zip(*accounts)]
    await conn.execute(
        "INSERT INTO accounts (id, kind, currency, name)"
        " SELECT * FROM unnest(%s::UUID[], %s::TEXT[], %s::TEXT[], %s::TEXT[])",
        columns,
    )
    await conn.execute(
        "INSERT INTO balances (account_id, kind, balance, position)"
        " SELECT i, k, 0, 0 FROM unnest(%s::UUID[], %s::TEXT[]) AS a (i, k)",
        columns[:2],
    )


_JOURNAL_COPY_TYPES = [
    "int8", "uuid", "uuid", "uuid", "int8", "text", "text", "jsonb", "timestamptz", "text", "text", "text", "uuid",
]


async def copy_batch(conn, result: domain.BatchResult, *, committed_at: dt.datetime) -> None:
    """The bulk twin of `write_batch` for `tools.seed`: the same entries, postings, balances and
    head, appended with COPY, without idempotency keys. Nothing is published: the publisher
    cursor moves with the head, as if these entries' events had come and gone."""
    entries = result.entries
    assert entries, "an empty batch writes nothing"
    async with conn.cursor() as cursor:
        async with cursor.copy(
            "COPY journal (position, transfer_id, from_account_id, to_account_id, amount, currency, reference,"
            " metadata, committed_at, prev_hash, hash, kind, refund_of) FROM STDIN WITH BINARY"
        ) as copy:
            copy.set_types(_JOURNAL_COPY_TYPES)
            for e in entries:
                await copy.write_row((
                    e.position, e.transfer_id, e.from_account_id, e.to_account_id, e.amount, e.currency,
                    e.reference, Jsonb(e.metadata), committed_at, e.prev_hash, e.hash, e.kind, e.refund_of,
                ))
        async with cursor.copy(
            "COPY postings (position, account_id, amount, balance_after, reference) FROM STDIN WITH BINARY"
        ) as copy:
            copy.set_types(["int8", "uuid", "int8", "int8", "text"])
            for row in _postings_rows(result):
                await copy.write_row(row)
    await _move_balances_and_head(conn, result, committed_at=committed_at)
    await conn.execute(
        "UPDATE publish_cursor SET position = greatest(position, %s), updated_at = now() WHERE id = 1",
        (entries[-1].position,),
    )
