"""Connection pools: one for reads, one for the committer, both switched to a service role.

The login in LEDGER_DATABASE_URL may be powerful (in `ledger dev` it is the superuser); every
pooled connection runs `SET ROLE` first, so the service only ever holds the privileges of its
role and the journal stays append-only whatever URL it was given.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ledger import dialect as dialects
from ledger import store

log = logging.getLogger("ledger.db")

CONNECT_TIMEOUT_S = 5.0
POOL_TIMEOUT_S = 5.0
STARTUP_RETRY_S = 0.5


async def detect_dialect(url: str) -> dialects.Dialect:
    async with await psycopg.AsyncConnection.connect(url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        return dialects.from_version(await store.server_version(conn))


async def wait_for_dialect(url: str) -> dialects.Dialect:
    """`detect_dialect`, retried until the database answers: a service started while the database
    restarts waits for it (cancellable, as by SIGTERM) instead of exiting at once."""
    while True:
        try:
            return await detect_dialect(url)
        except psycopg.OperationalError as error:
            log.warning("database not reachable yet, retrying in %.1fs: %s", STARTUP_RETRY_S, error)
            await asyncio.sleep(STARTUP_RETRY_S)


async def migrate(url: str) -> list[str]:
    """Apply the schema migrations with the login in `url` (it must own the schema)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        return await store.migrate(conn)


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
