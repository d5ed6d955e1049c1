"""Every SQL statement of the ledger, in the subset PostgreSQL and CockroachDB both accept.

Driver errors are translated once, into the small set the service knows (`StoreUnavailable`,
`Conflict`, both `StoreError`s) by `translate`, which the pool of `ledger.db` applies to
everything done on its connections; nothing above imports psycopg's error classes.
Dialect differences (there are few) come from `ledger.dialect`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.resources
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import args_row, class_row, kwargs_row, namedtuple_row
from psycopg.types.json import Jsonb

import schemas
from ledger import domain

API_ROLE = "ledger_api"
PROJECTOR_ROLE = "ledger_projector"
AUDITOR_ROLE = "ledger_auditor"
WEBHOOKS_ROLE = "ledger_webhooks"

# Tables nobody but the migration role may UPDATE or DELETE: the journal is append-only.
JOURNAL_TABLES = ("journal", "postings")

GRANTS: dict[str, dict[str, str]] = {
    API_ROLE: {
        "principals": "SELECT, INSERT",
        "tokens": "SELECT, INSERT, UPDATE",
        "accounts": "SELECT, INSERT",
        "balances": "SELECT, INSERT, UPDATE",
        "journal": "SELECT, INSERT",
        "postings": "SELECT, INSERT",
        "journal_head": "SELECT, UPDATE",
        "idempotency": "SELECT, INSERT, DELETE",
        "outbox": "SELECT, INSERT, DELETE",
        "refund_totals": "SELECT, INSERT, UPDATE",
        "holds": "SELECT, INSERT, UPDATE",
        "projector_checkpoint": "SELECT",
        "projected_balances": "SELECT",
        "verifications": "SELECT",
        "signed_checkpoints": "SELECT",
        "merkle_nodes": "SELECT",
        "merkle_state": "SELECT",
        "signed_tree_heads": "SELECT",
        "webhook_endpoints": "SELECT, INSERT, UPDATE",
        "webhook_deliveries": "SELECT",
    },
    PROJECTOR_ROLE: {
        "accounts": "SELECT",
        "journal": "SELECT",
        "postings": "SELECT",
        "journal_head": "SELECT",
        "projector_checkpoint": "SELECT, INSERT, UPDATE, DELETE",
        "projected_balances": "SELECT, INSERT, UPDATE, DELETE",
        "verifications": "SELECT, INSERT, UPDATE, DELETE",
        "merkle_nodes": "SELECT, INSERT, DELETE",
        "merkle_state": "SELECT, UPDATE",
        "signed_tree_heads": "SELECT, INSERT",
    },
    AUDITOR_ROLE: {
        "accounts": "SELECT",
        "balances": "SELECT",
        "journal": "SELECT",
        "postings": "SELECT",
        "journal_head": "SELECT",
        "refund_totals": "SELECT",
        "holds": "SELECT",
        "projector_checkpoint": "SELECT",
        "projected_balances": "SELECT",
        "verifications": "SELECT",
        "signed_checkpoints": "SELECT, INSERT",
        "merkle_nodes": "SELECT",
        "merkle_state": "SELECT",
        "signed_tree_heads": "SELECT, INSERT",
    },
    # The webhook worker (`ledger webhooks`): reads the journal, writes only its own tables.
    WEBHOOKS_ROLE: {
        "accounts": "SELECT",
        "journal": "SELECT",
        "postings": "SELECT",
        "journal_head": "SELECT",
        "webhook_endpoints": "SELECT, UPDATE",
        "webhook_deliveries": "SELECT, INSERT, UPDATE",
        "webhook_checkpoint": "SELECT, INSERT, UPDATE",
    },
}


class StoreError(Exception):
    """A failure of the database, not of the request."""


class StoreUnavailable(StoreError):
    """The database could not be reached, or failed or timed out mid-way. A write in flight may or
    may not have committed (the COMMIT may have been lost): only a retry with its key tells."""


class Conflict(StoreError):
    """A retryable conflict (serialization failure, deadlock, lock timeout): nothing was written,
    and the same transaction run again may succeed."""


def translate(error: BaseException) -> StoreError | None:
    """The service's error for a driver error, or None for one that is a bug, not an outage (a
    syntax or constraint error: those stay as they are and surface as a 500)."""
    from ledger.dialect import is_retryable

    if isinstance(error, psycopg.Error) and is_retryable(error):
        return Conflict(str(error).strip())
    if isinstance(error, psycopg.OperationalError):  # includes psycopg_pool.PoolTimeout
        return StoreUnavailable(str(error).strip())
    return None


# ---- migrations -----------------------------------------------------------------------------


def migration_files() -> list[tuple[int, str, str]]:
    folder = importlib.resources.files("ledger") / "migrations"
    found = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            version = int(item.name.split("_", 1)[0])
            found.append((version, item.name, item.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(conn: psycopg.AsyncConnection) -> list[str]:
    """Apply the versioned files not yet recorded, each in its own transaction; safe to rerun."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INT8 PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    await conn.commit()
    applied = {row[0] for row in await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()}
    done = []
    for version, name, text in migration_files():
        if version in applied:
            continue
        async with conn.transaction():
            for statement in split_statements(text):
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
        done.append(name)
    await _dialect_ddl(conn)
    await grant_roles(conn)
    return done


async def _dialect_ddl(conn: psycopg.AsyncConnection) -> None:
    """What only one database has (the hash-sharded journal index on CockroachDB)."""
    from ledger.dialect import from_version

    ddl = from_version(await server_version(conn)).journal_index_ddl()
    if ddl:
        await conn.execute(ddl)


def split_statements(text: str) -> list[str]:
    """Migration files hold plain statements separated by `;` at line ends (no bodies, no quotes
    containing `;`), which keeps them portable and lets CockroachDB run them one by one."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


async def grant_roles(conn: psycopg.AsyncConnection) -> None:
    """Create the service roles if missing and give each exactly its privileges."""
    async with conn.transaction():
        for role, tables in GRANTS.items():
            exists = await (await conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,))).fetchone()
            if not exists:
                await conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
            for table, privileges in tables.items():
                target = sql.Identifier(table)
                await conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(target, sql.Identifier(role)))
                await conn.execute(
                    sql.SQL("GRANT " + privileges + " ON {} TO {}").format(target, sql.Identifier(role))
                )


# ---- principals and accounts ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrincipalRow:
    id: uuid.UUID
    role: str
    name: str


@dataclass(frozen=True, slots=True)
class TokenOwnerRow:
    """The principal a live (unrevoked) token belongs to, and which of its tokens it is."""

    id: uuid.UUID
    role: str
    name: str
    token_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: uuid.UUID
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


async def insert_principal(conn, *, principal_id: uuid.UUID, role: str, name: str) -> None:
    await conn.execute("INSERT INTO principals (id, role, name) VALUES (%s, %s, %s)", (principal_id, role, name))


async def insert_token(conn, *, token_id: uuid.UUID, principal_id: uuid.UUID, token_hash: bytes) -> TokenRow:
    return await _fetch_one(
        conn, class_row(TokenRow),
        "INSERT INTO tokens (id, principal_id, token_hash) VALUES (%s, %s, %s)"
        " RETURNING id, created_at, last_used_at, revoked_at",
        (token_id, principal_id, token_hash),
    )


async def principal_by_token_hash(conn, token_hash: bytes) -> TokenOwnerRow | None:
    return await _fetch_one(
        conn, class_row(TokenOwnerRow),
        "SELECT p.id, p.role, p.name, t.id AS token_id FROM tokens t JOIN principals p ON p.id = t.principal_id"
        " WHERE t.token_hash = %s AND t.revoked_at IS NULL",
        (token_hash,),
    )


async def tokens_of(conn, principal_id: uuid.UUID) -> list[TokenRow]:
    async with conn.cursor(row_factory=class_row(TokenRow)) as cursor:
        await cursor.execute(
            "SELECT id, created_at, last_used_at, revoked_at FROM tokens WHERE principal_id = %s"
            " ORDER BY created_at, id",
            (principal_id,),
        )
        return await cursor.fetchall()


async def revoke_token(conn, *, principal_id: uuid.UUID, token_id: uuid.UUID) -> bool:
    """Revoke the token (keeping the first revocation time); False when the principal has no such token."""
    await conn.execute(
        "UPDATE tokens SET revoked_at = now() WHERE id = %s AND principal_id = %s AND revoked_at IS NULL",
        (token_id, principal_id),
    )
    row = await (
        await conn.execute("SELECT 1 FROM tokens WHERE id = %s AND principal_id = %s", (token_id, principal_id))
    ).fetchone()
    return row is not None


async def mark_tokens_used(conn, token_ids: list[uuid.UUID], *, at: dt.datetime) -> None:
    """Record use in bulk (the authenticator flushes this now and then, not on every request)."""
    await conn.execute(
        "UPDATE tokens SET last_used_at = %s WHERE id = ANY(%s::UUID[])", (at, _numbers(token_ids))
    )


async def delete_idempotency_before(conn, *, before: dt.datetime, limit: int) -> int:
    """Forget up to `limit` idempotency keys stored before `before`; returns how many went."""
    cursor = await conn.execute(
        "DELETE FROM idempotency WHERE (principal_id, key) IN"
        " (SELECT principal_id, key FROM idempotency WHERE created_at < %s LIMIT %s)",
        (before, limit),
    )
    return cursor.rowcount


async def _fetch_one(conn, row_factory, query: str, params: tuple = ()):
    async with conn.cursor(row_factory=row_factory) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()


async def principal_exists(conn, principal_id: uuid.UUID) -> bool:
    row = await (await conn.execute("SELECT 1 FROM principals WHERE id = %s", (principal_id,))).fetchone()
    return row is not None


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: uuid.UUID
    kind: str
    currency: str
    owner_id: uuid.UUID | None
    name: str
    created_at: dt.datetime


_ACCOUNT_COLUMNS = "a.id, a.kind, a.currency, a.owner_id, a.name, a.created_at"


async def insert_account(conn, account: AccountRow) -> tuple[AccountRow, bool]:
    """Create the account and its zero balance, or return the one already stored under that id."""
    async with conn.transaction():
        inserted = await (
            await conn.execute(
                "INSERT INTO accounts (id, kind, currency, owner_id, name) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING RETURNING created_at",
                (account.id, account.kind, account.currency, account.owner_id, account.name),
            )
        ).fetchone()
        if inserted is not None:
            await conn.execute(
                "INSERT INTO balances (account_id, kind, balance, position) VALUES (%s, %s, 0, 0)",
                (account.id, account.kind),
            )
            return dataclasses.replace(account, created_at=inserted[0]), True
    existing = await account_by_id(conn, account.id)
    assert existing is not None
    return existing, False


async def account_by_id(conn, account_id: uuid.UUID) -> AccountRow | None:
    return await _fetch_one(
        conn, class_row(AccountRow), f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.id = %s", (account_id,)
    )


# The sum of the account's pending holds as payer (holds_by_payer).
_HELD = (
    "coalesce((SELECT sum(x.amount) FROM holds x WHERE x.from_account_id = a.id AND x.status = 'pending'), 0)::INT8"
    " AS held"
)
# The same right after position {at}: placed at or before it, not closed at or before it.
_HELD_AT = (
    "coalesce((SELECT sum(x.amount) FROM holds x WHERE x.from_account_id = a.id AND x.position <= {at}"
    " AND (x.closed_position IS NULL OR x.closed_position > {at})), 0)::INT8 AS held"
)


async def account_with_balance(conn, account_id: uuid.UUID) -> schemas.Account | None:
    """The account with its committed balance and the journal head it is exact at, read in one
    statement (one snapshot)."""
    return await _fetch_one(
        conn,
        kwargs_row(schemas.Account),
        f"SELECT {_ACCOUNT_COLUMNS}, b.balance, h.position, {_HELD} FROM accounts a"
        " JOIN balances b ON b.account_id = a.id CROSS JOIN journal_head h"
        " WHERE a.id = %s AND h.id = 1",
        (account_id,),
    )


async def accounts_page(
    conn, *, owner_id: uuid.UUID | None, after: uuid.UUID | None, limit: int
) -> list[schemas.Account]:
    """Accounts by id after `after` (all of them when `owner_id` is None), each with its committed
    balance and the head it is exact at, in one statement."""
    return await _fetch_all(
        conn,
        kwargs_row(schemas.Account),
        f"SELECT {_ACCOUNT_COLUMNS}, b.balance, h.position, {_HELD} FROM accounts a"
        " JOIN balances b ON b.account_id = a.id CROSS JOIN journal_head h"
        " WHERE h.id = 1 AND (%s::UUID IS NULL OR a.owner_id = %s) AND (%s::UUID IS NULL OR a.id > %s)"
        " ORDER BY a.id LIMIT %s",
        (owner_id, owner_id, after, after, limit),
    )


@dataclass(frozen=True, slots=True)
class PastAccount:
    """An account with its balance right after `position`, and the journal head when it was read."""

    account: schemas.Account
    head: int


# The balance of account %(id)s right after position %(at)s: the `balance_after` of its last
# posting at or before it (one lookup on postings_by_account), 0 before its first entry. The
# order names account_id first, as postings_by_account does, so the planner walks that index and
# not the primary key (position, account_id), which for a rarely used account would scan far.
_BALANCE_AT = (
    "coalesce((SELECT p.balance_after FROM postings p WHERE p.account_id = a.id AND p.position <= {at}"
    " ORDER BY p.account_id DESC, p.position DESC LIMIT 1), 0)"
)


async def account_at_position(conn, account_id: uuid.UUID, position: int) -> PastAccount | None:
    """The account as it was right after journal position `position` (not checked against the head,
    which is returned for the caller to judge), read in one statement."""
    row = await _fetch_one(conn, namedtuple_row, ACCOUNT_AT_POSITION_SQL, {"id": account_id, "at": position})
    return _past_account(row, position) if row is not None else None


async def account_as_of(conn, account_id: uuid.UUID, moment: dt.datetime) -> PastAccount | None:
    """The account as it was right after the last entry committed at or before `moment` (position
    0 when none): the entry is one lookup on journal_by_time, since committed_at never decreases
    along positions; read in one statement."""
    row = await _fetch_one(
        conn, namedtuple_row,
        "WITH t AS (SELECT coalesce((SELECT j.position FROM journal j WHERE j.committed_at <= %(moment)s"
        " ORDER BY j.committed_at DESC, j.position DESC LIMIT 1), 0) AS at)"
        f" SELECT {_ACCOUNT_COLUMNS}, {_BALANCE_AT.format(at='t.at')} AS balance, {_HELD_AT.format(at='t.at')},"
        " h.position AS head, t.at"
        " FROM accounts a CROSS JOIN journal_head h CROSS JOIN t WHERE a.id = %(id)s AND h.id = 1",
        {"id": account_id, "moment": moment},
    )
    return _past_account(row, row.at) if row is not None else None


ACCOUNT_AT_POSITION_SQL = (
    f"SELECT {_ACCOUNT_COLUMNS}, {_BALANCE_AT.format(at='%(at)s')} AS balance, {_HELD_AT.format(at='%(at)s')},"
    " h.position AS head"
    " FROM accounts a CROSS JOIN journal_head h WHERE a.id = %(id)s AND h.id = 1"
)


def _past_account(row, position: int) -> PastAccount:
    account = schemas.Account(
        id=row.id, kind=row.kind, currency=row.currency, owner_id=row.owner_id, name=row.name,
        balance=row.balance, position=position, created_at=row.created_at, held=row.held,
    )
    return PastAccount(account, row.head)


async def statement(
    conn, account_id: uuid.UUID, *, after: int, limit: int, reference: str | None
) -> list[schemas.StatementItem]:
    """The entries touching the account after position `after`, as the account sees them: a range
    scan on postings_by_account (ordered as that index is), each posting's entry looked up by its
    position (a lateral join whose LIMIT 1 keeps the planner from flattening it, so the plan is a
    nested loop that stops at `limit`, never a merge join walking the journal from its start),
    in one statement. A `reference` filter still walks
    the account's postings (there is no index on reference)."""
    return await _fetch_all(
        conn, kwargs_row(_statement_item), STATEMENT_SQL, (account_id, after, reference, reference, limit)
    )


STATEMENT_SQL = (
    "SELECT p.position, j.transfer_id, j.kind, p.amount, p.balance_after,"
    " CASE WHEN j.from_account_id = p.account_id THEN j.to_account_id ELSE j.from_account_id END"
    " AS counterparty_account_id, j.reference, j.committed_at"
    " FROM postings p JOIN LATERAL (SELECT e.transfer_id, e.kind, e.from_account_id, e.to_account_id,"
    " e.reference, e.committed_at FROM journal e WHERE e.position = p.position LIMIT 1) j ON true"
    " WHERE p.account_id = %s AND p.position > %s AND (%s::TEXT IS NULL OR j.reference = %s)"
    " ORDER BY p.account_id, p.position LIMIT %s"
)


def _statement_item(*, committed_at: dt.datetime, **row) -> schemas.StatementItem:
    return schemas.StatementItem(committed_at=domain.format_timestamp(committed_at), **row)


async def _fetch_all(conn, row_factory, query: str, params) -> list:
    async with conn.cursor(row_factory=row_factory) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchall()


# ---- the journal write path -----------------------------------------------------------------


# Every writer of the journal takes the head row first: it orders writers and makes positions gap-free.
_HEAD_FOR_UPDATE = "SELECT position, hash, committed_at FROM journal_head WHERE id = 1 FOR UPDATE"


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
    position, digest, committed_at = await head_cursor.fetchone()
    accounts = {account.id: account for account in await accounts_cursor.fetchall()}
    stored = {(k.principal_id, k.key): (bytes(k.request_hash), k.position) for k in await keys_cursor.fetchall()}
    refunded = dict(await refunds_cursor.fetchall()) if refunds_cursor is not None else {}
    holds = {hold.id: hold for hold in await holds_cursor.fetchall()} if holds_cursor is not None else {}
    return domain.BatchState(position, digest, accounts, stored, refunded, committed_at, holds)


_HOLD_COLUMNS = (
    "h.id, h.from_account_id, h.to_account_id, h.amount, h.currency, h.reference, h.metadata, h.status,"
    " h.captured_amount, h.expires_at, h.position, h.closed_position, h.transfer_id"
)


def _numbers(values) -> str:
    """An array literal of numbers or UUIDs (no quoting needed). psycopg adapts a Python list
    element by element in Python, which cost about a tenth of the API's CPU under load; one
    string that the server casts (`%s::UUID[]`) costs almost nothing and both databases accept it."""
    return "{" + ",".join(map(str, values)) + "}"


def _nullable(values) -> str:
    """An array literal of numbers or UUIDs where None is SQL NULL."""
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def _texts(values) -> str:
    """An array literal of arbitrary text: every element quoted, backslashes and quotes escaped."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


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
            _texts([json.dumps(e.metadata) for e in entries]),
            _numbers([e.prev_hash for e in entries]),
            _numbers([e.hash for e in entries]),
            _numbers([e.kind for e in entries]),
            _nullable([e.refund_of for e in entries]),
            _nullable([e.hold_id for e in entries]),
        ),
    )
    postings = _postings_rows(result)
    await conn.execute(
        "INSERT INTO postings (position, account_id, amount, balance_after)"
        " SELECT * FROM unnest(%s::INT8[], %s::UUID[], %s::INT8[], %s::INT8[])",
        tuple(_numbers([p[i] for p in postings]) for i in range(4)),
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
    await conn.execute("INSERT INTO outbox (position) SELECT * FROM unnest(%s::INT8[])", (_numbers([e.position for e in entries]),))
    await _move_balances_and_head(conn, result, committed_at=committed_at)


def _postings_rows(result: domain.BatchResult) -> list[tuple[int, uuid.UUID, int, int]]:
    """(position, account_id, amount, balance_after) of every posting of the batch."""
    return [
        (e.position, p.account_id, p.amount, after)
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
            _nullable([h.closed_position for h in holds]),
            _nullable([h.transfer_id for h in holds]),
        ),
    )


# ---- holds ----------------------------------------------------------------------------------


async def hold_by_id(conn, hold_id: uuid.UUID) -> domain.HoldState | None:
    return await _fetch_one(
        conn, class_row(domain.HoldState), f"SELECT {_HOLD_COLUMNS} FROM holds h WHERE h.id = %s", (hold_id,)
    )


async def due_holds(conn, *, now: dt.datetime, limit: int) -> list[domain.HoldState]:
    """Up to `limit` pending holds whose `expires_at` has passed, soonest first (holds_due)."""
    return await _fetch_all(
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
    return await _fetch_all(conn, class_row(domain.HoldState), f"SELECT {_HOLD_COLUMNS} FROM holds h ORDER BY h.position", ())


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
    return await _fetch_one(
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


# ---- outbox ---------------------------------------------------------------------------------


async def delete_outbox(conn, positions: list[int]) -> None:
    await conn.execute("DELETE FROM outbox WHERE position = ANY(%s)", (positions,))


async def outbox_positions(conn, *, older_than: dt.datetime, limit: int) -> list[int]:
    rows = await (
        await conn.execute(
            "SELECT position FROM outbox WHERE created_at < %s ORDER BY position LIMIT %s", (older_than, limit)
        )
    ).fetchall()
    return [row[0] for row in rows]


async def outbox_size(conn) -> int:
    row = await (await conn.execute("SELECT count(*) FROM outbox")).fetchone()
    return row[0]


async def ping(conn) -> None:
    await conn.execute("SELECT 1")


async def server_version(conn) -> str:
    row = await (await conn.execute("SELECT version()")).fetchone()
    return row[0]


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
    head, appended with COPY, without outbox rows (nothing is published) or idempotency keys."""
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
            "COPY postings (position, account_id, amount, balance_after) FROM STDIN WITH BINARY"
        ) as copy:
            copy.set_types(["int8", "uuid", "int8", "int8"])
            for row in _postings_rows(result):
                await copy.write_row(row)
    await _move_balances_and_head(conn, result, committed_at=committed_at)
