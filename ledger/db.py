"""Database connections, opened one way: one connection (`connect`), or a pool (`make_pool`)

`connect_blocking` is `connect` in a worker process without an event loop. Every runtime caller
opens its connections here, so the connect timeout, the TCP keepalives, the dialect's connection
class and the driver-error translation are written once.

The login in LEDGER_DATABASE_URL may be powerful (in `ledger dev` it is the superuser); every
service connection runs `SET ROLE` first, so the service only ever holds the privileges of its
role and the journal stays append-only whatever URL it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ledger import dialect as dialects
from ledger import store

if TYPE_CHECKING:
    from ledger import config

log = logging.getLogger("ledger.db")

CONNECT_TIMEOUT_S = 5.0
POOL_TIMEOUT_S = 5.0
STARTUP_RETRY_S = 0.5
# With a synchronous standby, PostgreSQL commits locally and then waits for the standby (no
# statement timeout covers that wait). A wait cut short by a cancel request (psycopg sends one when
# the awaiting task is cancelled; an operator's pg_cancel_backend) still reports the COMMIT as done,
# only with this warning: the transaction is on one node, and a failover now would lose it.
SYNC_REPLICATION_CANCELLED = "wait for synchronous replication"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """What the database enforces on every service connection, so nothing waits forever: a paused
    or partitioned process holding the journal head lock is cut off by the server, and a dead peer
    is noticed by TCP keepalives instead of the kernel's hours-long default.

    `lock_ms`: a statement waiting longer for a lock fails with 55P03 (retried like a conflict);
    `statement_ms`: one statement at most (57014); `idle_in_transaction_ms`: a session idle inside
    an open transaction is terminated and its locks released; `keepalive_idle_s` and friends: the
    libpq keepalive parameters. CockroachDB accepts the same three session settings."""

    lock_ms: int = 5_000
    statement_ms: int = 10_000
    idle_in_transaction_ms: int = 10_000
    keepalive_idle_s: int = 10
    keepalive_interval_s: int = 5
    keepalive_count: int = 3

    def session_settings(self) -> dict[str, str]:
        return {
            "lock_timeout": f"{self.lock_ms}ms",
            "statement_timeout": f"{self.statement_ms}ms",
            "idle_in_transaction_session_timeout": f"{self.idle_in_transaction_ms}ms",
        }

    def connect_kwargs(self) -> dict[str, int]:
        return {
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle_s,
            "keepalives_interval": self.keepalive_interval_s,
            "keepalives_count": self.keepalive_count,
        }


DEFAULT_TIMEOUTS = Timeouts()


def timeouts_from(database: config.Database) -> Timeouts:
    """The database timeouts the settings ask for (the keepalives keep their defaults)."""
    return Timeouts(
        lock_ms=database.lock_timeout_ms,
        statement_ms=database.statement_timeout_ms,
        idle_in_transaction_ms=database.idle_in_transaction_timeout_ms,
    )


def _connect_kwargs(timeouts: Timeouts) -> dict[str, object]:
    """What every connection is opened with, pooled or not: autocommit (a transaction is always
    explicit), a bounded connect, and keepalives that notice a dead peer."""
    return {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S, **timeouts.connect_kwargs()}


async def connect(url: str, *, dialect: dialects.Dialect = dialects.POSTGRESQL) -> psycopg.AsyncConnection:
    """One connection outside a pool, for a command or a long read (migrations, the audit, a
    signature): autocommit, and without the services' statement timeouts, which a migration or a
    whole-journal read would outlast. The caller switches its role (`store.use_auditor_role`)."""
    return await dialect.connection_class.connect(url, **_connect_kwargs(DEFAULT_TIMEOUTS))


def connect_blocking(url: str, *, dialect: dialects.Dialect = dialects.POSTGRESQL) -> psycopg.Connection:
    """`connect` for a worker process without an event loop (the audit's range checkers)."""
    connection_class = psycopg.Connection
    if dialect is dialects.COCKROACHDB:
        from psycopg.crdb import CrdbConnection as connection_class
    return connection_class.connect(url, **_connect_kwargs(DEFAULT_TIMEOUTS))


async def detect_dialect(url: str) -> dialects.Dialect:
    async with await connect(url) as conn:
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
    async with await connect(url) as conn:
        return await store.migrate(conn)


# Connections whose last COMMIT returned without the synchronous standby's confirmation.
_unreplicated: weakref.WeakSet[psycopg.AsyncConnection] = weakref.WeakSet()


def _watch_replication(conn: psycopg.AsyncConnection) -> None:
    ref = weakref.ref(conn)

    def on_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
        watched = ref()
        if watched is not None and SYNC_REPLICATION_CANCELLED in (diagnostic.message_primary or ""):
            _unreplicated.add(watched)

    conn.add_notice_handler(on_notice)


class Pool(AsyncConnectionPool):
    """A pool whose connections report driver errors as the store's (`store.translate`): a lost
    connection or an empty pool is `StoreUnavailable`, a serialization failure `Conflict`, and a
    COMMIT the synchronous standby never confirmed `StoreUnavailable` too (its outcome across a
    failover is unknown: the caller answers "retry with the same key", never "done").

    A connection to a primary that died is discarded when its use fails, and its replacement is
    made from the same URL: with several hosts and `target_session_attrs=read-write`, libpq skips
    the dead node and the standby until one is promoted, so the pool follows a failover alone."""

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None):
        try:
            async with super().connection(timeout) as conn:
                _unreplicated.discard(conn)
                yield conn
                if conn in _unreplicated:
                    raise store.StoreUnavailable("the COMMIT was not confirmed by the synchronous standby")
        except psycopg.Error as error:
            translated = store.translate(error)
            if translated is None:
                raise
            raise translated from error


def make_pool(
    url: str,
    *,
    role: str | None,
    size_max: int,
    serializable: bool = False,
    dialect: dialects.Dialect = dialects.POSTGRESQL,
    name: str = "ledger",
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    relaxed: bool = False,
) -> Pool:
    """`relaxed`: the connections commit without waiting for the WAL flush (`Dialect.relaxed_session`)."""
    relaxed_statement = dialect.relaxed_session() if relaxed else None

    async def configure(conn: psycopg.AsyncConnection) -> None:
        await configure_session(conn, role=role, serializable=serializable, timeouts=timeouts)
        if relaxed_statement:
            await conn.execute(relaxed_statement)

    return Pool(
        url,
        min_size=1,
        max_size=size_max,
        open=False,
        configure=configure,
        connection_class=dialect.connection_class,
        kwargs=_connect_kwargs(timeouts),
        timeout=POOL_TIMEOUT_S,
        name=name,
    )


async def configure_session(
    conn: psycopg.AsyncConnection, *, role: str | None, serializable: bool = False, timeouts: Timeouts = DEFAULT_TIMEOUTS
) -> None:
    """What every service connection runs first: its role, its isolation, its timeouts, and the
    watch for COMMITs the synchronous standby did not confirm."""
    _watch_replication(conn)
    if role:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    if serializable:
        await conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    for name, value in timeouts.session_settings().items():
        await conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
