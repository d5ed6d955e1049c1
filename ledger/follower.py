"""One journal follower: the loop the projector, the webhook mapper and the Merkle tree follower share.

A follower derives something from the journal (read models, delivery rows, the tree) and keeps a
cursor: the journal position up to which its effects are written, in a row of its own. Each step
is one transaction: lock the cursor row, read a page of the journal after it, keep its contiguous
run, write the run's effects and move the cursor to its end. As eventsourcing's `Follower` writes
its tracking record with its effects, the cursor moves with what it covers, so a crash anywhere
repeats at most a step, and the repeat finds the cursor moved. The lock makes a second instance of
the same follower (or a restarted one racing the old) wait and then read the moved cursor: under
READ COMMITTED a plain SELECT would let both read the same cursor and both apply the same range.
The run stops at the first hole (an entry that committed after a later one): the next step finds
it filled.

The journal is the truth; NATS only rings. A follower with a durable consumer fetches the
journal's events as doorbells (`ledger.bus.Doorbells`): they say when to look, and what is written
is what the journal holds, so a forged, corrupt or repeated event can make a follower look, never
write. Without doorbells (NATS down, the consumer refused, or a follower that polls) it looks every
`poll_s`. A round that fails is logged once as what it is, an outage at INFO or a bug at ERROR with
its traceback (`ledger.logs.round_failed`), and the loop carries on; after a failed round the
doorbells are subscribed afresh, so a consumer deleted while NATS stays up is made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from ledger import domain, logs, standby, store
from ledger.bus import EventBus, raise_if_cancelled

FETCH_BATCH_MAX = 1000  # doorbells taken in one fetch (acked together: the consumer acks cumulatively)
FETCH_WAIT_S = 0.5  # a fetch waits this long for a doorbell; then the follower looks all the same
RETRY_S = 0.5  # the pause after a failed round (the database or NATS away, or a bug)


class JournalFollower:
    """The loop, the locked step and the doorbells; a subclass says what its cursor is
    (`open_cursor`, `lock_cursor`) and what a run of entries writes (`write`), and may say what a
    page is (`read_page`), what a round does (`round`) and what follows a step (`stepped`,
    `abandoned`). `position` is the cursor as this process last saw it."""

    page_max: int  # journal entries read per step (one transaction): each follower says its own
    poll_s = FETCH_WAIT_S  # how often a follower without doorbells looks

    def __init__(self, *, name: str, pool, log: logging.Logger, bus: EventBus | None = None,
                 durable: str | None = None, from_start: bool = False) -> None:
        """`durable` is the follower's JetStream consumer (None: no doorbells, it polls);
        `from_start`: a consumer made for the first time starts at the stream's first event."""
        self.name = name
        self.position = 0
        self._pool = pool
        self._log = log
        self._bus = bus
        self._durable = durable
        self._from_start = from_start
        # Nothing the standby may lack is followed: a failover would take it back (`ledger.standby`).
        self.standby = standby.StandbyGate(name)

    # ---- what a follower says -----------------------------------------------------------------

    async def open_cursor(self, conn) -> int:
        """The cursor at start, its row made if this follower has none yet."""
        raise NotImplementedError

    async def lock_cursor(self, conn) -> int:
        """Inside the step's transaction: the cursor, its row locked until the transaction ends."""
        raise NotImplementedError

    async def read_page(self, conn, after: int) -> list[Any]:
        """Up to `page_max` entries after `after`, in position order (each with a `position`)."""
        return await store.entries_after(conn, after, self.page_max)

    async def write(self, conn, run: list[Any]) -> None:
        """Inside the step's transaction: the run's effects, and the cursor moved to its end."""
        raise NotImplementedError

    async def stepped(self, run: list[Any]) -> None:
        """After a step committed (`run` empty when there was nothing to write)."""

    def abandoned(self) -> None:
        """A step's transaction did not commit: forget what it prepared."""

    async def round(self, doorbells: list[Msg]) -> None:
        """What a round does once a doorbell rang or the wait ended: follow the journal to its head."""
        await self.follow()

    # ---- the journal ----------------------------------------------------------------------------

    async def step(self, conn=None) -> tuple[list[Any], bool]:
        """One transaction: lock the cursor, read a page after it, write its contiguous run (up to
        the position the synchronous standby holds) and move the cursor. Returns the run and
        whether there may be more (a full page, or a run cut at the standby's position). On `conn`
        if given, else on a connection of the pool."""
        try:
            async with self._connection(conn) as conn:
                confirmed = await self.standby.confirm(conn)
                async with conn.transaction():
                    current = await self.lock_cursor(conn)
                    page = await self.read_page(conn, current)
                    run = domain.contiguous(page, after=current)
                    kept = run if confirmed is None else [entry for entry in run if entry.position <= confirmed]
                    if kept:
                        await self.write(conn, kept)
        except BaseException:
            self.abandoned()
            raise
        self.position = kept[-1].position if kept else current
        await self.stepped(kept)
        return kept, len(page) == self.page_max or len(kept) < len(run)

    async def follow(self, *, until: int | None = None) -> int:
        """Step until the journal's head (a page not full: what commits later rings again), a hole,
        or `until`; returns the cursor."""
        while until is None or self.position < until:
            run, full = await self.step()
            if not run or not full:
                break
        return self.position

    def _connection(self, conn):
        return contextlib.nullcontext(conn) if conn is not None else self._pool.connection()

    # ---- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the journal until cancelled; nothing but cancellation ends it."""
        await self._open()
        doorbells = None
        while True:
            raise_if_cancelled()
            try:
                doorbells = doorbells or await self._subscribe()
                rung = await self._wait(doorbells)
                await self.round(rung)
                if rung:  # AckPolicy.ALL (EventBus.subscribe_doorbells): acking the last acks them all
                    await rung[-1].ack()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logs.round_failed(self._log, "%s round failed; retrying", error, self.name)
                # Subscribe afresh: NATS may have come back, or the consumer been deleted while it
                # stayed up (its fetches then fail for good; subscribing makes it again).
                doorbells = None
                await asyncio.sleep(RETRY_S)

    async def _open(self) -> None:
        """Read the cursor, waiting for the database if it is away (a process must come up)."""
        while True:
            raise_if_cancelled()
            try:
                async with self._pool.connection() as conn:
                    self.position = await self.open_cursor(conn)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logs.round_failed(self._log, "%s cannot read its cursor yet; retrying", error, self.name)
                await asyncio.sleep(RETRY_S)

    async def _subscribe(self):
        """The doorbells, or None: no NATS, or a consumer NATS refuses (`subscribe_doorbells`
        says so, once and in a metric); the follower then polls, and tries again next round."""
        if self._bus is None or self._durable is None or not self._bus.connected:
            return None
        try:
            doorbells = await self._bus.subscribe_doorbells(self._durable, from_start=self._from_start)
        except Exception:
            return None
        # Once made, a consumer made again (deleted meanwhile) starts at the next event: the cursor
        # says where the journal is read from, and the old events as doorbells would only cost CPU.
        self._from_start = False
        return doorbells

    async def _wait(self, doorbells) -> list[Msg]:
        if doorbells is None:
            await asyncio.sleep(self.poll_s)
            return []
        try:
            return await doorbells.fetch(FETCH_BATCH_MAX, timeout=FETCH_WAIT_S)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []
