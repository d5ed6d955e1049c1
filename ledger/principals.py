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

from ledger import store

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
    """Store a new principal under the digest of a fresh token; the token itself is returned once."""
    token = new_token()
    principal = Principal(uuid.uuid4(), role, name)
    await store.insert_principal(conn, principal_id=principal.id, role=role, name=name, token_hash=token_digest(token))
    return principal, token


async def create_at(database_url: str, *, role: str, name: str) -> tuple[Principal, str]:
    """`create` on a connection of its own (the command line and the local tooling)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return await create(conn, role=role, name=name)
