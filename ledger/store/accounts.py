"""Principals, tokens, accounts, balances in the past and statements."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass

from psycopg.rows import class_row, kwargs_row, namedtuple_row

import schemas
from ledger import controls, domain
from ledger.store.base import fetch_all, fetch_one, _numbers


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
    return await fetch_one(
        conn, class_row(TokenRow),
        "INSERT INTO tokens (id, principal_id, token_hash) VALUES (%s, %s, %s)"
        " RETURNING id, created_at, last_used_at, revoked_at",
        (token_id, principal_id, token_hash),
    )


async def principal_by_token_hash(conn, token_hash: bytes) -> TokenOwnerRow | None:
    return await fetch_one(
        conn, class_row(TokenOwnerRow),
        "SELECT p.id, p.role, p.name, t.id AS token_id FROM tokens t JOIN principals p ON p.id = t.principal_id"
        " WHERE t.token_hash = %s AND t.revoked_at IS NULL",
        (token_hash,),
    )


async def tokens_of(conn, principal_id: uuid.UUID) -> list[TokenRow]:
    return await fetch_all(
        conn, class_row(TokenRow),
        "SELECT id, created_at, last_used_at, revoked_at FROM tokens WHERE principal_id = %s ORDER BY created_at, id",
        (principal_id,),
    )


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
# The controls in force now (`ledger.controls`), shown with every account.
_CONTROL_COLUMNS = "a.status, a.min_balance, a.max_balance"


async def insert_account(conn, account: AccountRow) -> tuple[AccountRow, bool]:
    """Create the account with its kind's default controls (others are set by an account entry)
    and its zero balance, or return the one already stored under that id."""
    floor = controls.defaults(account.kind).min_balance
    async with conn.transaction():
        inserted = await (
            await conn.execute(
                "INSERT INTO accounts (id, kind, currency, owner_id, name, min_balance) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING RETURNING created_at",
                (account.id, account.kind, account.currency, account.owner_id, account.name, floor),
            )
        ).fetchone()
        if inserted is not None:
            await conn.execute(
                "INSERT INTO balances (account_id, kind, balance, position, balance_floor) VALUES (%s, %s, 0, 0, %s)",
                (account.id, account.kind, floor),
            )
            return dataclasses.replace(account, created_at=inserted[0]), True
    existing = await account_by_id(conn, account.id)
    assert existing is not None
    return existing, False


async def account_by_id(conn, account_id: uuid.UUID) -> AccountRow | None:
    return await fetch_one(
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
    return await fetch_one(
        conn,
        kwargs_row(schemas.Account),
        f"SELECT {_ACCOUNT_COLUMNS}, b.balance, h.position, {_HELD}, {_CONTROL_COLUMNS} FROM accounts a"
        " JOIN balances b ON b.account_id = a.id CROSS JOIN journal_head h"
        " WHERE a.id = %s AND h.id = 1",
        (account_id,),
    )


async def accounts_page(
    conn, *, owner_id: uuid.UUID | None, after: uuid.UUID | None, limit: int
) -> list[schemas.Account]:
    """Accounts by id after `after` (all of them when `owner_id` is None), each with its committed
    balance and the head it is exact at, in one statement."""
    return await fetch_all(
        conn,
        kwargs_row(schemas.Account),
        f"SELECT {_ACCOUNT_COLUMNS}, b.balance, h.position, {_HELD}, {_CONTROL_COLUMNS} FROM accounts a"
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
    row = await fetch_one(conn, namedtuple_row, ACCOUNT_AT_POSITION_SQL, {"id": account_id, "at": position})
    return _past_account(row, position) if row is not None else None


async def account_as_of(conn, account_id: uuid.UUID, moment: dt.datetime) -> PastAccount | None:
    """The account as it was right after the last entry committed at or before `moment` (position
    0 when none): the entry is one lookup on journal_by_time, since committed_at never decreases
    along positions; read in one statement."""
    row = await fetch_one(
        conn, namedtuple_row,
        "WITH t AS (SELECT coalesce((SELECT j.position FROM journal j WHERE j.committed_at <= %(moment)s"
        " ORDER BY j.committed_at DESC, j.position DESC LIMIT 1), 0) AS at)"
        f" SELECT {_ACCOUNT_COLUMNS}, {_BALANCE_AT.format(at='t.at')} AS balance, {_HELD_AT.format(at='t.at')},"
        f" {_CONTROL_COLUMNS}, h.position AS head, t.at"
        " FROM accounts a CROSS JOIN journal_head h CROSS JOIN t WHERE a.id = %(id)s AND h.id = 1",
        {"id": account_id, "moment": moment},
    )
    return _past_account(row, row.at) if row is not None else None


ACCOUNT_AT_POSITION_SQL = (
    f"SELECT {_ACCOUNT_COLUMNS}, {_BALANCE_AT.format(at='%(at)s')} AS balance, {_HELD_AT.format(at='%(at)s')},"
    f" {_CONTROL_COLUMNS}, h.position AS head"
    " FROM accounts a CROSS JOIN journal_head h WHERE a.id = %(id)s AND h.id = 1"
)


def _past_account(row, position: int) -> PastAccount:
    account = schemas.Account(
        id=row.id, kind=row.kind, currency=row.currency, owner_id=row.owner_id, name=row.name,
        balance=row.balance, position=position, created_at=row.created_at, held=row.held,
        status=row.status, min_balance=row.min_balance, max_balance=row.max_balance,  # the controls now
    )
    return PastAccount(account, row.head)


async def statement(
    conn, account_id: uuid.UUID, *, after: int, limit: int, reference: str | None
) -> list[schemas.StatementItem]:
    """The entries touching the account after position `after`, as the account sees them, in one
    statement (`statement_query`)."""
    query, params = statement_query(account_id, after=after, limit=limit, reference=reference)
    return await fetch_all(conn, kwargs_row(_statement_item), query, params)


def statement_query(account_id: uuid.UUID, *, after: int, limit: int, reference: str | None) -> tuple[str, tuple]:
    """A range scan on postings_by_account, or with a `reference` on postings_by_reference (so a
    reference that matches nothing reads nothing), ordered as the index is; each posting's entry
    looked up by its position (a lateral join whose LIMIT 1 keeps the planner from flattening it,
    so the plan is a nested loop that stops at `limit`, never a merge join walking the journal
    from its start)."""
    if reference is None:
        return STATEMENT_SQL, (account_id, after, limit)
    return STATEMENT_BY_REFERENCE_SQL, (account_id, after, reference, limit)


_STATEMENT_SQL = (
    "SELECT p.position, j.transfer_id, j.kind, p.amount, p.balance_after,"
    " CASE WHEN j.from_account_id = p.account_id THEN j.to_account_id ELSE j.from_account_id END"
    " AS counterparty_account_id, j.reference, j.committed_at"
    " FROM postings p JOIN LATERAL (SELECT e.transfer_id, e.kind, e.from_account_id, e.to_account_id,"
    " e.reference, e.committed_at FROM journal e WHERE e.position = p.position LIMIT 1) j ON true"
    " WHERE p.account_id = %s AND p.position > %s{where}"
    " ORDER BY p.account_id,{order} p.position LIMIT %s"
)
STATEMENT_SQL = _STATEMENT_SQL.format(where="", order="")
STATEMENT_BY_REFERENCE_SQL = _STATEMENT_SQL.format(where=" AND p.reference = %s", order=" p.reference,")


def _statement_item(*, committed_at: dt.datetime, **row) -> schemas.StatementItem:
    return schemas.StatementItem(committed_at=domain.format_timestamp(committed_at), **row)


