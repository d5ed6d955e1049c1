"""Connection pools: one for reads, one for the committer, both switched to a service role.

The login in LEDGER_DATABASE_URL may be powerful (in `ledger dev` it is the superuser); every
pooled connection runs `SET ROLE` first, so the service only ever holds the privileges of its
role and the journal stays append-only whatever URL it was given.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ledger import dialect as dialects
from ledger import store

CONNECT_TIMEOUT_S = 5.0
POOL_TIMEOUT_S = 5.0


async def detect_dialect(url: str) -> dialects.Dialect:
    async with await psycopg.AsyncConnection.connect(url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        return dialects.from_version(await store.server_version(conn))


def make_pool(
    url: str,
    *,
    role: str | None,
    size_max: int,
    serializable: bool = False,
    dialect: dialects.Dialect = dialects.POSTGRESQL,
    name: str = "ledger",
) -> AsyncConnectionPool:
    async def configure(conn: psycopg.AsyncConnection) -> None:
        if role:
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        if serializable:
            await conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")

    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=size_max,
        open=False,
        configure=configure,
        connection_class=dialect.connection_class,
        kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "autocommit": True},
        timeout=POOL_TIMEOUT_S,
        name=name,
    )
