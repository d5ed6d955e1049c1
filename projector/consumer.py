"""The projector: a journal follower (`ledger.follower`) that builds the read models.

The journal is the only truth; an event is a doorbell. A fetched batch only says how far the
journal goes (its highest position), and the projector then reads the journal itself from its
cursor, a page (`JOURNAL_PAGE_MAX` entries) per transaction, applying each page together with the
moved cursor; only then are the messages acked. So a forged, corrupt or repeated event can make
the projector look, never make it apply anything the journal does not hold, and a position past
the journal head finds nothing. A crash anywhere in between re-delivers, and the cursor makes the
repeat a no-op. When no events arrive but the journal head is ahead for longer than
`GAP_GRACE_MS` (an event that was never published, NATS down, an event aged out of the stream),
the projector reads the tail from the journal all the same.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import msgspec
from nats.aio.msg import Msg
from prometheus_client import start_http_server

import schemas
from ledger import db, domain, metrics, store
from ledger.bus import SUBJECT, EventBus
from ledger.config import Settings
from ledger.follower import JournalFollower
from projector import store as projections

log = logging.getLogger("ledger.projector")

GAP_GRACE_MS = 300  # the journal head ahead this long with no doorbell: the tail is read anyway
JOURNAL_PAGE_MAX = 2000  # entries applied per transaction

_decoder = msgspec.json.Decoder(schemas.JournalEntry)


class Projector(JournalFollower):
    page_max = JOURNAL_PAGE_MAX

    def __init__(self, *, settings: Settings, pool, bus: EventBus) -> None:
        super().__init__(name=f"projector {settings.projector.name}", pool=pool, log=log, bus=bus,
                         durable=f"projector-{settings.projector.name}", from_start=True)
        self._settings = settings
        self._cursor_name = settings.projector.name
        self._behind_since: float | None = None
        self._claimed: dict[int, schemas.JournalEntry] = {}
        self._now = dt.datetime.now(dt.timezone.utc)  # the current step's: projected_at, and the lag

    @property
    def watermark(self) -> int:
        """How far the read models go, as this process last saw it (the projector's cursor)."""
        return self.position

    @watermark.setter
    def watermark(self, position: int) -> None:
        self.position = position

    async def load_cursor(self) -> int:
        async with self._pool.connection() as conn:
            self.position = await self.open_cursor(conn)
        return self.position

    async def open_cursor(self, conn) -> int:
        position = await projections.cursor(conn, self._cursor_name)
        metrics.PROJECTOR_WATERMARK.set(position)
        return position

    async def lock_cursor(self, conn) -> int:
        self._now = dt.datetime.now(dt.timezone.utc)
        return await projections.lock_cursor(conn, self._cursor_name, now=self._now)

    async def write(self, conn, run: list[schemas.JournalEntry]) -> None:
        await projections.apply_entries(conn, run, name=self._cursor_name, projected_at=self._now)

    async def stepped(self, run: list[schemas.JournalEntry]) -> None:
        metrics.PROJECTOR_WATERMARK.set(self.position)
        if run:
            self._check_claims(run, self._claimed)
            metrics.PROJECTOR_GAP_FILLS.inc(sum(1 for e in run if e.position not in self._claimed))
            self._observe_lag(run, self._now)
            await self._bus.announce_watermark(self.position)

    async def apply(self, claims: list[schemas.JournalEntry]) -> int:
        """Follow the journal as far as the events claim it goes; returns the new watermark.

        An event is only a doorbell: its position says where to look, and what is applied is what
        the journal holds there. A forged or corrupt event therefore changes nothing but how far
        the projector reads, and a position past the journal head finds nothing to read."""
        claimed = {e.position: e for e in claims if e.position > self.position}
        if not claimed:
            return self.position
        self._claimed = claimed
        try:
            return await self.follow(until=max(claimed))
        finally:
            self._claimed = {}

    async def round(self, doorbells: list[Msg]) -> None:
        if not doorbells:
            await self._tail_check()
            return
        entries = []
        for message in doorbells:
            try:
                entries.append(_decoder.decode(message.data))
            except msgspec.MsgspecError:
                log.warning("undecodable event on %s; acked and ignored (the journal fills its place)", SUBJECT)
        await self.apply(entries)

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
        return await self.follow()

    async def _tail_check(self) -> None:
        """No doorbell came: read the tail anyway once the head has been ahead for `GAP_GRACE_MS`
        (an event may be on its way; one that never comes must not stall the read models)."""
        async with self._pool.connection() as conn:
            head = (await store.journal_head(conn)).position
        if head <= self.position:
            self._behind_since = None
            return
        now = time.monotonic()
        if self._behind_since is None:
            self._behind_since = now
        elif (now - self._behind_since) * 1000 >= GAP_GRACE_MS:
            await self.catch_up_from_journal()
            self._behind_since = None


def _bus(settings: Settings, name: str) -> EventBus:
    return EventBus.from_settings(settings.nats, name=name)


async def rebuild(settings: Settings, pool) -> int:
    """Drop the read models and replay them from the journal (stop the projector first)."""
    async with pool.connection() as conn:
        async with conn.transaction():
            await projections.reset(conn, settings.projector.name)
    projector = Projector(settings=settings, pool=pool, bus=_bus(settings, "ledger-rebuild"))
    return await projector.catch_up_from_journal()


async def rebuild_at(settings: Settings) -> int:
    """`ledger projector rebuild`: `rebuild` on a pool of its own."""
    pool = db.make_pool(settings.database.url, role=store.PROJECTOR_ROLE, size_max=2,
                        timeouts=db.timeouts_from(settings.database))
    await pool.open(wait=True)
    try:
        return await rebuild(settings, pool)
    finally:
        await pool.close()


async def serve(settings: Settings, *, metrics_listener: bool = False) -> None:
    """`metrics_listener`: serve /metrics on LEDGER_METRICS_PORT, when the projector runs in its own
    process (`ledger projector`); inside `ledger dev` the API's listener already shows its metrics."""
    dialect = await db.wait_for_dialect(settings.database.url)
    # The read models are derived from the journal with their cursor in the same transaction: a
    # commit lost in a crash is applied again, so they need not wait for the WAL flush.
    pool = db.make_pool(settings.database.url, role=store.PROJECTOR_ROLE, size_max=1, dialect=dialect, name="projector",
                        timeouts=db.timeouts_from(settings.database), relaxed=True)
    await pool.open(wait=True)
    bus = _bus(settings, "ledger-projector")
    bus.start()
    metrics_server = None
    if metrics_listener and settings.http.metrics_port is not None:
        metrics_server, _ = start_http_server(settings.http.metrics_port, addr=settings.http.host)
    try:
        await Projector(settings=settings, pool=pool, bus=bus).run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        await bus.close()
        await pool.close()
