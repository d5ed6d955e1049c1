"""The webhook mapper: journal entries to delivery rows, a journal follower (`ledger.follower`).

Like the projector, it treats an event as a doorbell: whatever the messages say, it reads the
journal from its own cursor, maps each entry to the events it is for vendors
(`webhooks.events.events_of`), and writes one delivery row per subscribed endpoint together with
the moved cursor, in one transaction (the outbox of deliveries); only then are the messages acked.
A forged event changes nothing; an event never published is found in the journal all the same.
The rows the sender has room for are written already leased to it and handed over after the
commit (`webhooks.sender.Sender.reserve`), so a first attempt needs no claim.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid

from nats.aio.msg import Msg

import schemas
from ledger import domain, metrics
from ledger.bus import EventBus
from ledger.follower import JournalFollower
from webhooks import events
from webhooks import store as ws
from webhooks.sender import LEASE_S, Sender

log = logging.getLogger("webhooks.mapper")

JOURNAL_PAGE_MAX = 1000  # entries mapped per transaction
# Mapping rounds start at most this often: under load each round maps a page of entries in one
# transaction instead of a few entries per doorbell (each round is five statements and a commit).
MAP_INTERVAL_S = 0.05
# A new worker starts following the journal just before the earliest live endpoint was
# registered, this much earlier for the clocks of the API processes that stamp the entries.
START_MARGIN_S = 60.0


class Mapper(JournalFollower):
    """Journal entries to delivery rows, with the cursor, following the journal."""

    page_max = JOURNAL_PAGE_MAX

    def __init__(self, *, pool, bus: EventBus, name: str, wake: asyncio.Event, sender: Sender) -> None:
        super().__init__(name=f"webhook mapper {name}", pool=pool, log=log, bus=bus, durable=f"webhooks-{name}")
        self._cursor_name = name
        self._wake = wake
        self._sender = sender
        self._round_at = 0.0
        # The step's delivery rows and which of them the sender took (written leased to it).
        self._rows: list[tuple[uuid.UUID, events.Event]] = []
        self._leased: list[bool] = []

    async def open_cursor(self, conn) -> int:
        position = await ws.start_cursor(conn, self._cursor_name, margin_s=START_MARGIN_S)
        metrics.WEBHOOK_CHECKPOINT.set(position)
        log.info("webhook mapper follows the journal after position %d", position)
        return position

    async def lock_cursor(self, conn) -> int:
        return await ws.lock_cursor(conn, self._cursor_name)

    async def write(self, conn, run: list[schemas.JournalEntry]) -> None:
        """The run's deliveries and the moved cursor. The rows the sender has room for are written
        leased to it and handed over after the commit, so a first attempt needs no claim (a
        statement and a row update fewer); if this process dies before attempting them, their
        lease ends and any worker claims them."""
        self._rows = await self._deliveries(conn, run, dt.datetime.now(dt.timezone.utc))
        self._leased = self._sender.reserve([(endpoint_id, event.vendor_account_id) for endpoint_id, event in self._rows])
        await ws.insert_deliveries(conn, self._rows, leased=self._leased, lease_s=LEASE_S)
        await ws.move_cursor(conn, self._cursor_name, run[-1].position)

    def _taken(self) -> list[tuple[uuid.UUID, events.Event]]:
        taken = [row for row, leased in zip(self._rows, self._leased) if leased]
        self._rows, self._leased = [], []
        return taken

    def abandoned(self) -> None:
        self._sender.release([(endpoint_id, event.vendor_account_id) for endpoint_id, event in self._taken()])

    async def stepped(self, run: list[schemas.JournalEntry]) -> None:
        metrics.WEBHOOK_CHECKPOINT.set(self.position)
        all_taken = all(self._leased)
        self._sender.hand([_claimed(endpoint_id, event) for endpoint_id, event in self._taken()])
        if not all_taken:
            self._wake.set()  # rows the sender had no room for are due: the claims take them

    async def round(self, doorbells: list[Msg]) -> None:
        # The doorbell rang (or the wait ended): the journal says what there is, once the previous
        # round is MAP_INTERVAL_S old, so that a round maps a page, not an entry.
        await asyncio.sleep(max(0.0, self._round_at + MAP_INTERVAL_S - time.monotonic()))
        self._round_at = time.monotonic()
        await self.follow()

    @staticmethod
    async def _deliveries(conn, run: list[schemas.JournalEntry], now: dt.datetime) -> list[tuple[uuid.UUID, events.Event]]:
        # Only vendor accounts have endpoints (the API registers no other), so the parties with a
        # live endpoint are the vendors this page concerns: one statement, not two.
        parties = list({account for entry in run for account in (entry.from_account_id, entry.to_account_id)})
        endpoints: dict[uuid.UUID, list[ws.Subscription]] = {}
        for endpoint in await ws.live_endpoints_of(conn, parties):
            endpoints.setdefault(endpoint.vendor_account_id, []).append(endpoint)
        if not endpoints:
            return []
        vendors = set(endpoints)
        found = [event for entry in run for event in events.events_of(entry, vendors, now=now)]
        return [(endpoint.id, event) for event in found for endpoint in endpoints.get(event.vendor_account_id, ())
                if event.type in endpoint.event_types]


def _claimed(endpoint_id: uuid.UUID, event: events.Event) -> ws.Claimed:
    return ws.Claimed(endpoint_id, event.seq, event.id, event.body, 0, domain.parse_timestamp(event.committed_at),
                      event.vendor_account_id)
