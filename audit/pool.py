"""The audit's reading and checking, spread over worker processes; the replay stays in the audit's.

Each worker joins the audit's snapshot, reads a bounded range of positions and checks there
everything an entry's own row can prove (`summary.summarize`); the replay, which is
order-dependent, stays in the audit's process.

A range whose entries are all plain transfers that pass comes back as a `Summary` (the hashes at
its ends, each account's balance before and after it, the payments the projection must have
verified): the replay checks the links into it and goes past it without seeing an entry. Any
other range (a hold, a refund, anything a check could fault) comes back row by row, as the
replay without workers reads it, and is fed entry by entry. At most `AUDIT_RANGES_IN_FLIGHT`
ranges are read ahead, so memory does not grow with the journal.
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
from audit.entries import entries_from_rows, hash_mismatches
from audit.summary import AccountsByText, Summary, summarize

# Positions one worker reads and checks at a time: large enough that a task's overhead (a
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


def range_ends(after: int, upto: int, cuts: set[int]) -> list[tuple[int, int]]:
    """The ranges (start, end] that cover (after, upto], at most `AUDIT_RANGE_ENTRIES` long, with
    each of `cuts` an end (the positions where the replay must stand between two ranges)."""
    ends = sorted({*range(after + AUDIT_RANGE_ENTRIES, upto, AUDIT_RANGE_ENTRIES), upto}
                  | {cut for cut in cuts if after < cut < upto})
    return list(zip([after] + ends[:-1], ends)) if upto > after else []


class Reader:
    """The journal of one audit, range by range, in position order: `Summary`s and pages."""

    def __init__(
        self, conn: psycopg.AsyncConnection, *, database_url: str, dialect: dialects.Dialect, token: str,
        workers: int, account_ids: Mapping[str, uuid.UUID], accounts: Mapping[uuid.UUID, tuple[str, str]],
    ) -> None:
        """`account_ids`: the accounts by their text form (`entries_from_rows`); `accounts`:
        every account's (kind, currency)."""
        self._conn = conn
        self._account_ids = account_ids
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        if workers:
            by_text = {str(account_id): (kind, currency, account_id.int) for account_id, (kind, currency) in accounts.items()}
            context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited connection or loop
            self._executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_join,
                                                 initargs=(database_url, dialect.name, token, by_text))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def ranges(
        self, *, after: int, upto: int, cuts: set[int], projector_position: int, hashes_upto: int,
    ) -> AsyncIterator[Summary | Page]:
        """The entries in positions (after, upto], in position order: a `Summary` of each range a
        worker found plain, the entries of any other (every range, without workers). `cuts`:
        positions a range must end at; `hashes_upto`: the summaries of ranges that start before
        it carry every entry's hash (for the Merkle tree)."""
        if self._executor is None:
            async for rows in reads.stream_entries(self._conn, after, upto):
                yield entries_from_rows(rows, self._account_ids), hash_mismatches(rows)
            return
        in_flight: collections.deque[Future] = collections.deque()
        try:
            for start, end in range_ends(after, upto, cuts):
                in_flight.append(self._executor.submit(_check_range, start, end, projector_position, start < hashes_upto))
                if len(in_flight) < AUDIT_RANGES_IN_FLIGHT:
                    continue
                yield self._decoded(await asyncio.wrap_future(in_flight.popleft()))
            while in_flight:
                yield self._decoded(await asyncio.wrap_future(in_flight.popleft()))
        finally:
            for future in in_flight:
                future.cancel()

    async def page(self, after: int, upto: int) -> Page:
        """The entries of (after, upto], for a summarized range the replay must feed entry by entry."""
        assert self._executor is not None, "only summaries are read again"
        return self._decoded(await asyncio.wrap_future(self._executor.submit(_read_range, after, upto)))

    def _decoded(self, result: Summary | tuple[bytes, dict[int, str]]) -> Summary | Page:
        if isinstance(result, Summary):
            return result
        encoded, mismatches = result
        return entries_from_rows(msgspec.msgpack.decode(encoded), self._account_ids), mismatches


# ---- in the worker processes -------------------------------------------------------------------

_connection: psycopg.Connection | None = None
_accounts: AccountsByText = {}


def _join(database_url: str, dialect_name: str, token: str, accounts: AccountsByText) -> None:
    """A worker's start: one connection, as the auditor, inside the audit's snapshot. The cyclic
    garbage collector stays off: reading rows makes no cycles, and its rescans cost a third."""
    global _connection, _accounts
    gc.disable()
    _accounts = accounts
    dialect = dialects.COCKROACHDB if dialect_name == dialects.COCKROACHDB.name else dialects.POSTGRESQL
    _connection = db.connect_blocking(database_url, dialect=dialect)
    reads.join_snapshot(_connection, dialect, token)


def _check_range(after: int, upto: int, projector_position: int, with_hashes: bool) -> Summary | tuple[bytes, dict[int, str]]:
    """The range's `Summary` when it is plain, else its rows (`_read_range`)."""
    assert _connection is not None, "the worker joined no snapshot"
    rows = reads.entries_between(_connection, after, upto)
    summary = summarize(rows, after=after, upto=upto, accounts=_accounts, projector_position=projector_position,
                        with_hashes=with_hashes)
    return summary if summary is not None else _encoded(rows)


def _read_range(after: int, upto: int) -> tuple[bytes, dict[int, str]]:
    assert _connection is not None, "the worker joined no snapshot"
    return _encoded(reads.entries_between(_connection, after, upto))


def _encoded(rows) -> tuple[bytes, dict[int, str]]:
    """A range's rows as they cross to the audit's process, with the hashes that differ from the stored ones."""
    return _encoder.encode(rows), hash_mismatches(rows)


_encoder = msgspec.msgpack.Encoder()
