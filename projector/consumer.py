"""The projector: a durable JetStream pull consumer that builds the read models.

Each fetched batch is sorted by position; what is at or below the checkpoint is skipped (at
least once delivery means repeats); a hole between the checkpoint and the batch is filled by
reading those positions from the journal (the source of truth); the contiguous run is applied
in one transaction with the checkpoint; only then are the messages acked. A crash anywhere in
between re-delivers, and the checkpoint makes the repeat a no-op. When no events arrive but
the journal head is ahead for longer than `GAP_GRACE_MS` (an event that was never published,
NATS down), the projector reads the tail from the journal itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time

import msgspec
import nats.errors
import psycopg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import start_http_server

import schemas
from ledger import db, metrics, store
from ledger.bus import STREAM, SUBJECT, EventBus, raise_if_cancelled
from ledger.config import Settings
from projector import store as projections

log = logging.getLogger("ledger.projector")

FETCH_BATCH_MAX = 1000
FETCH_WAIT_S = 0.5
GAP_GRACE_MS = 300
JOURNAL_PAGE_MAX = 2000
ACK_PENDING_MAX = 20_000
ACK_WAIT_S = 30

_decoder = msgspec.json.Decoder(schemas.JournalEntry)


class Projector:
    def __init__(self, *, settings: Settings, pool, bus: EventBus) -> None:
        self._settings = settings
        self._name = settings.projector_name
        self._pool = pool
        self._bus = bus
        self.watermark = 0
        self._behind_since: float | None = None

    async def load_checkpoint(self) -> int:
        async with self._pool.connection() as conn:
            self.watermark = await projections.checkpoint(conn, self._name)
        metrics.PROJECTOR_WATERMARK.set(self.watermark)
        return self.watermark

    async def apply(self, entries: list[schemas.JournalEntry]) -> int:
        """Apply what extends the watermark, filling holes from the journal; returns new watermark."""
        fresh = sorted({e.position: e for e in entries if e.position > self.watermark}.values(), key=lambda e: e.position)
        if not fresh:
            return self.watermark
        wanted = range(self.watermark + 1, fresh[-1].position + 1)
        have = {e.position: e for e in fresh}
        missing = [p for p in wanted if p not in have]
        async with self._pool.connection() as conn:
            if missing:
                for entry in await store.entries_by_positions(conn, missing):
                    have[entry.position] = entry
                metrics.PROJECTOR_GAP_FILLS.inc(len(missing))
            run = []
            for position in wanted:
                if position not in have:
                    break  # not committed yet (a racing writer); the rest waits for the next round
                run.append(have[position])
            if not run:
                return self.watermark
            now = dt.datetime.now(dt.timezone.utc)
            async with conn.transaction():
                # Another projector instance may have moved on; never apply twice.
                current = await projections.checkpoint(conn, self._name)
                run = [e for e in run if e.position > current]
                if run and run[0].position == current + 1:
                    await projections.apply_entries(conn, run, name=self._name, projected_at=now)
                    current = run[-1].position
        self._observe_lag(run, now)
        self.watermark = current
        metrics.PROJECTOR_WATERMARK.set(current)
        await self._bus.announce_watermark(current)
        return current

    @staticmethod
    def _observe_lag(run: list[schemas.JournalEntry], now: dt.datetime) -> None:
        for entry in run:
            committed = dt.datetime.strptime(entry.committed_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
            metrics.PROJECTOR_LAG_SECONDS.observe(max(0.0, (now - committed).total_seconds()))

    async def catch_up_from_journal(self) -> int:
        """Read the tail straight from the journal, page by page, until the head is reached."""
        while True:
            async with self._pool.connection() as conn:
                entries = await store.entries_after(conn, self.watermark, JOURNAL_PAGE_MAX)
            if not entries:
                return self.watermark
            before = self.watermark
            await self.apply(entries)
            metrics.PROJECTOR_GAP_FILLS.inc(self.watermark - before)
            if self.watermark == before:
                return self.watermark

    async def _tail_check(self) -> None:
        async with self._pool.connection() as conn:
            head = (await store.journal_head(conn)).position
        if head <= self.watermark:
            self._behind_since = None
            return
        now = time.monotonic()
        if self._behind_since is None:
            self._behind_since = now
        elif (now - self._behind_since) * 1000 >= GAP_GRACE_MS:
            await self.catch_up_from_journal()
            self._behind_since = None

    async def run(self) -> None:
        while True:  # the database may be restarting as we start: wait for it, do not exit
            try:
                await self.load_checkpoint()
                break
            except psycopg.OperationalError as error:
                log.info("cannot read the checkpoint yet (%s); retrying", error)
                await asyncio.sleep(FETCH_WAIT_S)
        subscription = None
        while True:
            raise_if_cancelled()
            try:
                if subscription is None and self._bus.connected:
                    subscription = await self._subscribe()
                if subscription is None:
                    await self._tail_check()
                    await asyncio.sleep(FETCH_WAIT_S)
                    continue
                await self._pump(subscription)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # NATS or the database is away. The journal is the truth: follow it directly
                # while it answers, and resubscribe once NATS is back.
                log.info("projector round failed (%s); following the journal meanwhile", error)
                subscription = None if not self._bus.connected else subscription
                await asyncio.sleep(FETCH_WAIT_S)
                with contextlib.suppress(Exception):
                    await self._tail_check()

    async def _subscribe(self):
        await self._bus.ensure_stream()
        config = ConsumerConfig(
            durable_name=f"projector-{self._name}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=ACK_PENDING_MAX,
        )
        return await self._bus.js.pull_subscribe(SUBJECT, durable=config.durable_name, stream=STREAM, config=config)

    async def _pump(self, subscription) -> None:
        try:
            messages = await subscription.fetch(FETCH_BATCH_MAX, timeout=FETCH_WAIT_S)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            await self._tail_check()
            return
        entries = []
        for message in messages:
            try:
                entries.append(_decoder.decode(message.data))
            except msgspec.MsgspecError:
                log.error("undecodable event on %s; acked and ignored (the journal fills its place)", SUBJECT)
        await self.apply(entries)
        for message in messages:
            await message.ack()


async def rebuild(settings: Settings, pool) -> int:
    """Drop the read models and replay them from the journal (stop the projector first)."""
    async with pool.connection() as conn:
        async with conn.transaction():
            await projections.reset(conn, settings.projector_name)
    projector = Projector(settings=settings, pool=pool, bus=EventBus(settings.nats_url, name="ledger-rebuild", stream_replicas=settings.stream_replicas))
    return await projector.catch_up_from_journal()


async def rebuild_at(settings: Settings) -> int:
    """`ledger projector rebuild`: `rebuild` on a pool of its own."""
    pool = db.make_pool(settings.database_url, role=store.PROJECTOR_ROLE, size_max=2)
    await pool.open(wait=True)
    try:
        return await rebuild(settings, pool)
    finally:
        await pool.close()


async def serve(settings: Settings, *, metrics_listener: bool = False) -> None:
    """`metrics_listener`: serve /metrics on LEDGER_METRICS_PORT, when the projector runs in its own
    process (`ledger projector`); inside `ledger dev` the API's listener already shows its metrics."""
    dialect = await db.wait_for_dialect(settings.database_url)
    pool = db.make_pool(settings.database_url, role=store.PROJECTOR_ROLE, size_max=2, dialect=dialect, name="projector")
    await pool.open(wait=True)
    bus = EventBus(settings.nats_url, name="ledger-projector", stream_replicas=settings.stream_replicas)
    bus.start()
    metrics_server = None
    if metrics_listener and settings.metrics_port is not None:
        metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.http_host)
    try:
        await Projector(settings=settings, pool=pool, bus=bus).run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        await bus.close()
        await pool.close()
