"""From the journal to JetStream: the fast path after each commit, and the sweeper for the rest.

The gap-free journal is the outbox. One row, the publisher cursor, holds the last position whose
event JetStream acknowledged (every position before it acknowledged too); the entries after it,
up to the head, are the backlog. An entry is durable the moment it commits, so an event can be
late but never lost, and no per-entry outbox row is written or deleted.

The fast path publishes a batch right after its commit and hands the acknowledged run of positions
to the cursor keeper, one task that moves the cursor in a small transaction of its own, at most
once per `CURSOR_ADVANCE_INTERVAL_MS_MAX` (and never less often than a quarter of the sweeper's round):
runs pile up meanwhile, so under load one advance covers many batches. The
cursor only moves over a run that joins it, so a batch acknowledged before an earlier one (of this
process or another) waits for it. The sweeper publishes from the cursor to the head, a page at a
time, whatever was already behind at its previous round (NATS was down, the process died between
commit and publish, another process's run never joined). `Nats-Msg-Id` = transfer id lets
JetStream drop the repeats inside its duplicate window; consumers deduplicate by position beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from psycopg_pool import AsyncConnectionPool

import schemas
from ledger import logs, metrics, store
from ledger.bus import EventBus
from ledger.tasks import cancel_all

log = logging.getLogger("ledger.outbox")

SWEEP_BATCH_MAX = 1000
# Acknowledged runs waiting to join the cursor, at most; past it the oldest are forgotten (the
# sweeper republishes them, JetStream drops the repeats).
PENDING_RUNS_MAX = 10_000
# The cursor keeper waits this long after each advance before the next, so under load one small
# transaction covers several batches instead of one each (that transaction was 6-8% of the API's
# CPU). A cursor that lags only makes the sweeper or a restart republish what JetStream drops as
# repeats; the keeper waits at most a quarter of the sweeper's round, so the sweeper's one-round
# grace still leaves the fast path's events to the fast path.
CURSOR_ADVANCE_INTERVAL_MS_MAX = 100.0


class Outbox:
    def __init__(self, *, pool: AsyncConnectionPool, bus: EventBus, sweep_interval_ms: int,
                 relaxed_commit: str | None = None) -> None:
        """`relaxed_commit` is the dialect's statement that lets a transaction commit without
        waiting for its WAL flush: a cursor advance lost in a crash only republishes a few events."""
        self._pool = pool
        self._bus = bus
        self._interval_s = sweep_interval_ms / 1000
        self._cursor_interval_s = min(CURSOR_ADVANCE_INTERVAL_MS_MAX, sweep_interval_ms / 4) / 1000
        self._relaxed_commit = relaxed_commit
        self._runs: list[tuple[int, int]] = []  # acknowledged (first, last), not yet under the cursor
        self._runs_added = asyncio.Event()
        self._head_seen: int | None = None  # the head at the sweeper's previous round
        self._tasks: list[asyncio.Task] = []

    async def publish(self, entries: list[schemas.JournalEntry], request_ids: dict[int, str] | None = None) -> None:
        """The committer's fast path. Failures are left for the sweeper, never raised."""
        run = await self._publish(entries, request_ids)
        if run is not None:
            self._runs.append(run)
            if len(self._runs) > PENDING_RUNS_MAX:
                self._runs.sort()
                del self._runs[: len(self._runs) - PENDING_RUNS_MAX]
            self._runs_added.set()

    async def _publish(self, entries: list[schemas.JournalEntry], request_ids: dict[int, str] | None) -> tuple[int, int] | None:
        """Publish in position order; the run of positions from the first that JetStream acked."""
        try:
            acked = set(await self._bus.publish_entries(entries, request_ids=request_ids))
        except Exception as error:
            log.info("publish failed, left for the sweeper: %s", error)
            acked = set()
        metrics.EVENTS_PUBLISHED.inc(len(acked))
        metrics.EVENTS_FAILED.inc(len(entries) - len(acked))
        last = None
        for entry in entries:
            if entry.position not in acked:
                break
            last = entry.position
        return (entries[0].position, last) if last is not None else None

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sweep_forever(), name="outbox-sweeper"),
            asyncio.create_task(self._keep_cursor(), name="publish-cursor"),
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        with contextlib.suppress(Exception):  # best effort: what is not recorded is republished
            await self.advance_cursor()

    async def advance_cursor(self) -> int | None:
        """Move the cursor over the acknowledged runs that join it; returns the cursor."""
        if not self._runs:
            return None
        first, last = self._joined_runs()
        async with self._pool.connection() as conn, conn.transaction():
            if self._relaxed_commit:
                await conn.execute(self._relaxed_commit)
            cursor = await store.advance_publish_cursor(conn, first=first, last=last)
        self._runs = [run for run in self._runs if run[1] > cursor]
        return cursor

    def _joined_runs(self) -> tuple[int, int]:
        """The lowest contiguous stretch of the pending runs, as one run."""
        self._runs.sort()
        first, last = self._runs[0]
        for start, end in self._runs[1:]:
            if start > last + 1:
                break
            last = max(last, end)
        return first, last

    async def _keep_cursor(self) -> None:
        while True:
            await self._runs_added.wait()
            self._runs_added.clear()
            try:
                await self.advance_cursor()
            except Exception as error:
                logs.round_failed(log, "publish cursor advance failed (the sweeper republishes, JetStream dedups)", error)
            await asyncio.sleep(self._cursor_interval_s)

    async def sweep_once(self) -> int:
        """Publish a page of what was already behind the cursor at the previous round; returns
        how many entries were published. The one-round grace leaves fresh entries to the fast path."""
        async with self._pool.connection() as conn:
            cursor, head = await store.publish_progress(conn)
        metrics.PUBLISH_LAG.set(head - cursor)
        due, self._head_seen = self._head_seen, head
        if due is None or cursor >= due or not self._bus.connected:
            return 0
        async with self._pool.connection() as conn:
            entries = await store.entries_after(conn, cursor, min(due - cursor, SWEEP_BATCH_MAX))
        if not entries:
            return 0
        run = await self._publish(entries, None)
        if run is None:
            return 0
        async with self._pool.connection() as conn:
            await store.advance_publish_cursor(conn, first=run[0], last=run[1])
        if run[1] < due:
            self._head_seen = due  # still overdue: the next round goes on from the moved cursor
        return run[1] - run[0] + 1

    async def _sweep_forever(self) -> None:
        while True:
            try:
                published = await self.sweep_once()
            except Exception as error:
                logs.round_failed(log, "outbox sweep failed", error)
                published = 0
            if published < SWEEP_BATCH_MAX:
                await asyncio.sleep(self._interval_s)
