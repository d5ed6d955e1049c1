"""Principals and their bearer tokens: created once, the token shown once, only its digest stored.

The API's `POST /v1/principals`, `ledger principal` and the local tooling all create principals
through `create`, so there is one way a token is made and one way it is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

import psycopg

from ledger import db, store

TOKEN_PREFIX = "lt_"
TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class Principal:
    id: uuid.UUID
    role: str
    name: str


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> bytes:
    """Tokens are 256-bit random strings, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode("utf-8")).digest()


async def create(conn, *, role: str, name: str) -> tuple[Principal, str]:
    """Store a new principal and its first token; the token itself is returned once."""
    principal = Principal(uuid.uuid4(), role, name)
    async with conn.transaction():
        await store.insert_principal(conn, principal_id=principal.id, role=role, name=name)
        _, token = await issue_token(conn, principal.id)
    return principal, token


async def issue_token(conn, principal_id: uuid.UUID) -> tuple[store.TokenRow, str]:
    """One more token for the principal (rotation: issue, move over, revoke the old one)."""
    token = new_token()
    row = await store.insert_token(conn, token_id=uuid.uuid4(), principal_id=principal_id, token_hash=token_digest(token))
    return row, token


class NoSuchPrincipal(Exception):
    """The principal (or its token) does not exist."""


async def revoke(conn, principal_id: uuid.UUID, token_id: uuid.UUID) -> None:
    """From now on the token is refused (every API process within its auth cache time, < 1 s)."""
    if not await store.revoke_token(conn, principal_id=principal_id, token_id=token_id):
        raise NoSuchPrincipal(f"principal {principal_id} has no token {token_id}")


async def tokens(conn, principal_id: uuid.UUID) -> list[store.TokenRow]:
    if not await store.principal_exists(conn, principal_id):
        raise NoSuchPrincipal(f"no principal {principal_id}")
    return await store.tokens_of(conn, principal_id)


# ---- on a connection of their own (the command line and the local tooling) ----------------


async def create_at(database_url: str, *, role: str, name: str) -> tuple[Principal, str]:
    async with await _connect(database_url) as conn:
        return await create(conn, role=role, name=name)


async def issue_token_at(database_url: str, principal_id: uuid.UUID) -> tuple[store.TokenRow, str]:
    async with await _connect(database_url) as conn:
        if not await store.principal_exists(conn, principal_id):
            raise NoSuchPrincipal(f"no principal {principal_id}")
        return await issue_token(conn, principal_id)


async def revoke_at(database_url: str, principal_id: uuid.UUID, token_id: uuid.UUID) -> None:
    async with await _connect(database_url) as conn:
        await revoke(conn, principal_id, token_id)


async def tokens_at(database_url: str, principal_id: uuid.UUID) -> list[store.TokenRow]:
    async with await _connect(database_url) as conn:
        return await tokens(conn, principal_id)


async def _connect(database_url: str) -> psycopg.AsyncConnection:
    return await db.connect(database_url)
