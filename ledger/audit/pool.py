"""The audit's reading, spread over processes: each worker joins the audit's snapshot, reads a
bounded range of positions, recomputes every entry's hash there (`hash_mismatches`) and sends
the rows back encoded; the replay, which is order-dependent, stays in the audit's process.

Reading is where the time goes (decoding rows, building the hashed bytes, SHA-256): those run on
every core, while the replay of the previous range runs in the audit's process. At most
`AUDIT_RANGES_IN_FLIGHT` ranges are read ahead, so memory does not grow with the journal.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import multiprocessing
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor

import msgspec
import psycopg

from ledger import db, dialect as dialects
from ledger.store import audit as reads
from ledger.audit.replay import entries_from_rows, hash_mismatches

# Positions one worker reads and hashes at a time: large enough that a task's overhead (a
# query, a round trip between processes) is small beside it, small enough to keep in memory.
AUDIT_RANGE_ENTRIES = 10_000
# Ranges read ahead of the replay, at most: what bounds the audit's memory with workers.
AUDIT_RANGES_IN_FLIGHT = 2 * (os.cpu_count() or 1)
# Below this many entries the audit reads in its own process: starting workers costs more.
AUDIT_WORKERS_FROM_ENTRIES = 50_000

Page = tuple[list, dict[int, str]]  # (entries with their balances after, position -> recomputed hash)


def default_workers(entries: int) -> int:
    """Worker processes for a replay of `entries`: one per core, or none for a short journal."""
    return os.cpu_count() or 1 if entries >= AUDIT_WORKERS_FROM_ENTRIES else 0


async def pages(
    conn: psycopg.AsyncConnection, *, database_url: str, dialect: dialects.Dialect, token: str,
    after: int, upto: int, workers: int, account_ids: Mapping[str, uuid.UUID],
) -> AsyncIterator[Page]:
    """The entries in positions (after, upto], in position order, page by page, each page with
    the hashes its content calls for where they differ from the stored ones. `account_ids`: the
    accounts by their text form (`entries_from_rows`)."""
    if workers == 0:
        async for rows in reads.stream_entries(conn, after, upto):
            yield entries_from_rows(rows, account_ids), hash_mismatches(rows)
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited connection or loop
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_join,
                             initargs=(database_url, dialect.name, token)) as executor:
        ranges = iter(range(after, upto, AUDIT_RANGE_ENTRIES))
        in_flight: collections.deque[Future] = collections.deque()
        try:
            for start in ranges:
                in_flight.append(executor.submit(_read_range, start, min(start + AUDIT_RANGE_ENTRIES, upto)))
                if len(in_flight) < AUDIT_RANGES_IN_FLIGHT:
                    continue
                yield _decoded(await asyncio.wrap_future(in_flight.popleft()), account_ids)
            while in_flight:
                yield _decoded(await asyncio.wrap_future(in_flight.popleft()), account_ids)
        finally:
            for future in in_flight:
                future.cancel()


def _decoded(result: tuple[bytes, dict[int, str]], account_ids: Mapping[str, uuid.UUID]) -> Page:
    encoded, mismatches = result
    return entries_from_rows(msgspec.msgpack.decode(encoded), account_ids), mismatches


# ---- in the worker processes -------------------------------------------------------------------

_connection: psycopg.Connection | None = None


def _join(database_url: str, dialect_name: str, token: str) -> None:
    """A worker's start: one connection, as the auditor, inside the audit's snapshot. The cyclic
    garbage collector stays off: reading rows makes no cycles, and its rescans cost a third."""
    global _connection
    gc.disable()
    dialect = dialects.COCKROACHDB if dialect_name == dialects.COCKROACHDB.name else dialects.POSTGRESQL
    connection_class = psycopg.Connection
    if dialect is dialects.COCKROACHDB:
        from psycopg.crdb import CrdbConnection as connection_class
    _connection = connection_class.connect(database_url, autocommit=True, connect_timeout=db.CONNECT_TIMEOUT_S)
    reads.join_snapshot(_connection, dialect, token)


def _read_range(after: int, upto: int) -> tuple[bytes, dict[int, str]]:
    assert _connection is not None, "the worker joined no snapshot"
    rows = reads.entries_between(_connection, after, upto)
    mismatches = hash_mismatches(rows)
    return _encoder.encode(rows), mismatches


_encoder = msgspec.msgpack.Encoder()
