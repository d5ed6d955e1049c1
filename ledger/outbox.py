"""From the outbox to JetStream: the fast path after each commit, and the sweeper for the rest.

An outbox row is written in the same transaction as its entry, so an event can be late but
never lost. The fast path publishes right after commit and deletes what JetStream acknowledged;
the sweeper republishes whatever is still there after `SWEEP_GRACE_MS` (NATS was down, the
process died between commit and publish). `Nats-Msg-Id` = transfer id lets JetStream drop the
repeats inside its duplicate window; consumers deduplicate by position beyond it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from psycopg_pool import AsyncConnectionPool

import schemas
from ledger import metrics, store
from ledger.bus import EventBus

log = logging.getLogger("ledger.outbox")

SWEEP_GRACE_MS = 1000
SWEEP_BATCH_MAX = 1000


class Outbox:
    def __init__(self, *, pool: AsyncConnectionPool, bus: EventBus, sweep_interval_ms: int) -> None:
        self._pool = pool
        self._bus = bus
        self._interval_s = sweep_interval_ms / 1000
        self._task: asyncio.Task | None = None

    async def publish(self, entries: list[schemas.JournalEntry], request_ids: dict[int, str] | None = None) -> None:
        """The committer's fast path. Failures are left for the sweeper, never raised."""
        try:
            acked = await self._bus.publish_entries(entries, request_ids=request_ids)
        except Exception as error:
            log.info("publish failed, left in the outbox: %s", error)
            acked = []
        metrics.EVENTS_PUBLISHED.inc(len(acked))
        metrics.EVENTS_FAILED.inc(len(entries) - len(acked))
        if acked:
            try:
                async with self._pool.connection() as conn:
                    await store.delete_outbox(conn, acked)
            except Exception as error:
                log.info("outbox delete failed (the sweeper republishes, JetStream dedups): %s", error)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="outbox-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def sweep_once(self) -> int:
        """Publish what the fast path missed; returns how many entries were published."""
        older_than = dt.datetime.now(dt.timezone.utc) - dt.timedelta(milliseconds=SWEEP_GRACE_MS)
        async with self._pool.connection() as conn:
            positions = await store.outbox_positions(conn, older_than=older_than, limit=SWEEP_BATCH_MAX)
            metrics.OUTBOX_BACKLOG.set(await store.outbox_size(conn))
            if not positions or not self._bus.connected:
                return 0
            entries = await store.entries_by_positions(conn, positions)
        await self.publish(entries)
        return len(entries)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                published = await self.sweep_once()
            except Exception as error:
                log.info("outbox sweep failed: %s", error)
                published = 0
            if published < SWEEP_BATCH_MAX:
                await asyncio.sleep(self._interval_s)
