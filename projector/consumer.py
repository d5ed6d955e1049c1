"""The projector: a durable JetStream pull consumer that builds the read models.

The journal is the only truth; an event is a doorbell. A fetched batch only says how far the
journal goes (its highest position), and the projector then reads the journal itself from its
checkpoint, a page (`JOURNAL_PAGE_MAX` entries) per transaction, applying each page together
with the checkpoint; only then are the messages acked. So a forged, corrupt or repeated event
can make the projector look, never make it apply anything the journal does not hold, and a
position past the journal head finds nothing. A crash anywhere in between re-delivers, and the
checkpoint makes the repeat a no-op. When no events arrive but the journal head is ahead for
longer than `GAP_GRACE_MS` (an event that was never published, NATS down, an event aged out of
the stream), the projector reads the tail from the journal all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time

import msgspec
import nats.errors
from prometheus_client import start_http_server

import schemas
from ledger import db, domain, metrics, store
from proofs import tree
from ledger.bus import SUBJECT, EventBus, raise_if_cancelled
from ledger.config import Settings
from projector import store as projections

log = logging.getLogger("ledger.projector")

FETCH_BATCH_MAX = 1000
FETCH_WAIT_S = 0.5
GAP_GRACE_MS = 300
JOURNAL_PAGE_MAX = 2000

_decoder = msgspec.json.Decoder(schemas.JournalEntry)


class Projector:
    def __init__(self, *, settings: Settings, pool, bus: EventBus) -> None:
        self._settings = settings
        self._name = settings.projector.name
        self._pool = pool
        self._bus = bus
        self.watermark = 0
        self._behind_since: float | None = None

    async def load_checkpoint(self) -> int:
        async with self._pool.connection() as conn:
            self.watermark = await projections.checkpoint(conn, self._name)
        metrics.PROJECTOR_WATERMARK.set(self.watermark)
        return self.watermark

    async def apply(self, claims: list[schemas.JournalEntry]) -> int:
        """Follow the journal as far as the events claim it goes; returns the new watermark.

        An event is only a doorbell: its position says where to look, and what is applied is what
        the journal holds there. A forged or corrupt event therefore changes nothing but how far
        the projector reads, and a position past the journal head finds nothing to read."""
        claimed = {e.position: e for e in claims if e.position > self.watermark}
        if not claimed:
            return self.watermark
        return await self.follow_journal(until=max(claimed), claimed=claimed)

    async def follow_journal(self, *, until: int | None = None, claimed: dict | None = None) -> int:
        """Apply the journal page by page from the checkpoint, until `until` or the head."""
        while until is None or self.watermark < until:
            before = self.watermark
            run = await self._apply_page()
            if run:
                self._check_claims(run, claimed or {})
                metrics.PROJECTOR_GAP_FILLS.inc(sum(1 for e in run if e.position not in (claimed or {})))
            if self.watermark == before:
                break
        return self.watermark

    async def _apply_page(self) -> list[schemas.JournalEntry]:
        """One transaction: lock the checkpoint row, read the journal after it, apply, move it.

        The lock makes a second projector instance (or a restarted one racing the old) wait and
        then read the moved checkpoint, so no entry is ever applied twice. Under READ COMMITTED
        a plain SELECT would let both read the same checkpoint and both apply the range."""
        now = dt.datetime.now(dt.timezone.utc)
        async with self._pool.connection() as conn:
            async with conn.transaction():
                current = await projections.lock_checkpoint(conn, self._name, now=now)
                entries = await store.entries_after(conn, current, JOURNAL_PAGE_MAX)
                run = domain.contiguous(entries, after=current)
                if run:
                    await projections.apply_entries(conn, run, name=self._name, projected_at=now)
        self.watermark = run[-1].position if run else current
        metrics.PROJECTOR_WATERMARK.set(self.watermark)
        if run:
            self._observe_lag(run, now)
            await self._bus.announce_watermark(self.watermark)
        return run

    @staticmethod
    def _check_claims(run: list[schemas.JournalEntry], claimed: dict[int, schemas.JournalEntry]) -> None:
        for entry in run:
            claim = claimed.get(entry.position)
            if claim is not None and (claim.transfer_id, claim.hash) != (entry.transfer_id, entry.hash):
                metrics.PROJECTOR_FORGED_EVENTS.inc()
                log.warning("the event at position %d does not match the journal; the journal's entry was applied",
                            entry.position)

    @staticmethod
    def _observe_lag(run: list[schemas.JournalEntry], now: dt.datetime) -> None:
        for entry in run:
            committed = domain.parse_timestamp(entry.committed_at)
            metrics.PROJECTOR_LAG_SECONDS.observe(max(0.0, (now - committed).total_seconds()))

    async def catch_up_from_journal(self) -> int:
        """Read the tail straight from the journal, page by page, until the head is reached."""
        return await self.follow_journal()

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
            except store.StoreUnavailable as error:
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
        return await self._bus.subscribe_doorbells(f"projector-{self._name}", from_start=True)

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
                log.warning("undecodable event on %s; acked and ignored (the journal fills its place)", SUBJECT)
        await self.apply(entries)
        if messages:  # AckPolicy.ALL (EventBus.subscribe_doorbells): acking the last acks the batch
            await messages[-1].ack()


def _bus(settings: Settings, name: str) -> EventBus:
    return EventBus(settings.nats.url, name=name, stream_replicas=settings.nats.stream_replicas,
                    stream_max_age_s=settings.nats.stream_max_age_s, stream_max_bytes=settings.nats.stream_max_bytes)


async def rebuild(settings: Settings, pool) -> int:
    """Drop the read models and replay them from the journal (stop the projector first)."""
    async with pool.connection() as conn:
        async with conn.transaction():
            await projections.reset(conn, settings.projector.name)
    projector = Projector(settings=settings, pool=pool, bus=_bus(settings, "ledger-rebuild"))
    position = await projector.catch_up_from_journal()
    async with pool.connection() as conn:
        await tree.rebuild(conn)
    return position


async def rebuild_at(settings: Settings) -> int:
    """`ledger projector rebuild`: `rebuild` on a pool of its own."""
    pool = db.make_pool(settings.database.url, role=store.PROJECTOR_ROLE, size_max=2, timeouts=db.timeouts_from(settings.database))
    await pool.open(wait=True)
    try:
        return await rebuild(settings, pool)
    finally:
        await pool.close()


async def serve(settings: Settings, *, metrics_listener: bool = False) -> None:
    """`metrics_listener`: serve /metrics on LEDGER_METRICS_PORT, when the projector runs in its own
    process (`ledger projector`); inside `ledger dev` the API's listener already shows its metrics."""
    dialect = await db.wait_for_dialect(settings.database.url)
    # The read models are derived from the journal with their checkpoint in the same transaction:
    # a commit lost in a crash is applied again, so they need not wait for the WAL flush. The
    # Merkle tree follower, which signs tree heads that auditors keep, has a durable pool of its own.
    pool = db.make_pool(settings.database.url, role=store.PROJECTOR_ROLE, size_max=1, dialect=dialect, name="projector",
                        timeouts=db.timeouts_from(settings.database), relaxed=True)
    await pool.open(wait=True)
    tree_pool = db.make_pool(settings.database.url, role=store.PROJECTOR_ROLE, size_max=1, dialect=dialect,
                             name="tree", timeouts=db.timeouts_from(settings.database))
    await tree_pool.open(wait=True)
    bus = _bus(settings, "ledger-projector")
    bus.start()
    metrics_server = None
    if metrics_listener and settings.http.metrics_port is not None:
        metrics_server, _ = start_http_server(settings.http.metrics_port, addr=settings.http.host)
    # The Merkle tree follows the journal beside the projector, with its own checkpoint (unless
    # LEDGER_TREE_FOLLOWER=0 leaves it to another projector process).
    tree_task = None
    if settings.proofs.tree_follower:
        follower = tree.TreeFollower(tree_pool, sign_interval_s=settings.proofs.sign_interval_s, key_path=settings.proofs.signing_key)
        tree_task = asyncio.create_task(follower.run(), name="tree-follower")
    try:
        await Projector(settings=settings, pool=pool, bus=bus).run()
    finally:
        if tree_task is not None:
            tree_task.cancel()
            await asyncio.gather(tree_task, return_exceptions=True)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        await bus.close()
        await pool.close()
        await tree_pool.close()
