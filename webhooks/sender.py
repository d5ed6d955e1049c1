"""The webhook senders: claim due delivery rows with a lease, POST each one signed, record the outcome.

They claim due rows with a lease (`next_attempt_at` pushed `LEASE_S` ahead), POST each one,
signed, with a bounded concurrency overall and per endpoint and a timeout per attempt, and record
the outcome (delivered, retried later per `webhooks.events.RETRY_DELAYS_S`, or failed). A process
killed mid-attempt leaves its rows leased: they are due again once the lease ends, so every event
is delivered at least once, the same `webhook-id` on every attempt. New rows the senders have room
for skip the claim: the mapper writes them leased to its own process and hands them over once its
transaction has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time
import uuid
from dataclasses import dataclass

import aiohttp
import yarl

from ledger import metrics, store
from ledger.bus import raise_if_cancelled
from webhooks import events
from webhooks import store as ws

log = logging.getLogger("webhooks.sender")

ATTEMPT_S_MAX = 10.0  # the contract: a 2xx within 10 s ends it
# A held row waits for its endpoint's slot (at most two attempts: those ahead of it wait at most
# one for an overall slot, then make theirs), then for an overall slot (at most one: no more rows
# are held than twice the slots), then is attempted. The lease outlasts the four and the
# recording, so a live sender always records first, and a dead one's rows are due again after it.
LEASE_S = 4 * ATTEMPT_S_MAX + 10.0
# One vendor holds at most this share of the slots in rows (in flight or waiting), so its attempts
# take no more: a vendor whose endpoints all hang leaves the rest to the others, whose rows go
# first at each claim (`webhooks.store.claim_due` ranks the vendors by the rows they hold).
VENDOR_SHARE = 0.5
SENDER_POLL_S = 0.5  # due retries are looked for this often; new rows wake the senders at once
CLAIM_INTERVAL_S = 0.02  # claims start at most this often: the rows of several rounds in one claim
HELD_PER_SLOT = 2  # rows held (in flight or waiting for a slot) per slot: a bounded queue
RESPONSE_BYTES_MAX = 64 * 1024  # what is read of a receiver's answer, at most
ERROR_CHARS_MAX = 500
ENDPOINT_CACHE_MAX = 10_000
# The cached URL and secret of each endpoint are checked against the table this often (one cheap
# statement; the cache is pruned when an endpoint was registered or deleted since): a delete stops
# even rows claimed before it within about this long.
ENDPOINTS_CHECK_S = 1.0
RECORD_TRIES_MAX = 3
RECORD_BATCH_MAX = 500  # attempts recorded in one statement at most
RECORD_INTERVAL_S = 0.05  # outcomes are gathered this long into one statement (the lease is 30 s)
USER_AGENT = "wallet-ledger-webhooks/1"
# The outcome counters, bound to their label once rather than looked up on every attempt.
_DELIVERED = metrics.WEBHOOK_DELIVERIES.labels("delivered")
_RETRIED = metrics.WEBHOOK_DELIVERIES.labels("retried")
_FAILED = metrics.WEBHOOK_DELIVERIES.labels("failed")


@dataclass(frozen=True, slots=True)
class _Target:
    """Where an endpoint's rows go and how they are signed, derived once per endpoint (its URL
    and secret never change): the URL parsed, so aiohttp does not parse it on every attempt, and
    the secret decrypted to its HMAC key."""

    url: yarl.URL
    key: bytes


class PublicOnlyResolver(aiohttp.abc.AbstractResolver):
    """Refuses a host that resolves to any non-public address, on the very lookup the connection
    then uses: a DNS answer that changed since registration (rebinding) cannot reach inside."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        hosts = await self._inner.resolve(host, port, family)
        if not all(events.address_allowed(found["host"]) for found in hosts):
            raise OSError(f"{host} resolves to a non-public address")
        return hosts

    async def close(self) -> None:
        await self._inner.close()


class Sender:
    """Claims due deliveries and POSTs them, `concurrency_max` at once and `endpoint_max` per
    endpoint. It holds at most `HELD_PER_SLOT` times as many claimed rows as it has slots, overall
    and per endpoint (the bounded queue, so a held row's wait is bounded: see `LEASE_S`), and per
    vendor at most `VENDOR_SHARE` of its slots, so one vendor's attempts never take them all."""

    def __init__(self, *, pool, keyring: events.Keyring, wake: asyncio.Event, concurrency_max: int,
                 endpoint_max: int, allow_private: bool) -> None:
        self._pool = pool
        self._keyring = keyring
        self._wake = wake
        self._concurrency_max = concurrency_max
        self._endpoint_max = endpoint_max
        self._vendor_max = max(1, int(concurrency_max * VENDOR_SHARE))
        self._allow_private = allow_private
        self._in_flight: dict[ws.Claimed, asyncio.Task] = {}  # held rows: in flight or waiting for a slot
        # Rows held per endpoint and per vendor: started ones and those `reserve` took.
        self._per_endpoint: dict[uuid.UUID, int] = {}
        self._per_vendor: dict[uuid.UUID | None, int] = {}
        self._endpoint_slots: dict[uuid.UUID, asyncio.Semaphore] = {}
        self._slots = asyncio.Semaphore(concurrency_max)
        # The endpoints attempted lately, by id; an endpoint's URL and secret never change, but it
        # may be deleted: `_check_endpoints` drops the deleted ones.
        self._endpoints: dict[uuid.UUID, _Target] = {}
        self._endpoints_version: tuple | None = None
        self._endpoints_checked_at = -ENDPOINTS_CHECK_S
        self._http: aiohttp.ClientSession | None = None
        self._outcomes: list[ws.Attempt] = []  # attempts made, not yet recorded (at most the rows held)
        self._outcome_ready = asyncio.Event()
        self._more_due = False  # the last claim may have left due rows for want of room overall
        # Endpoints (with their vendor) that may have due rows the sender had no room for: new rows
        # it could not take (`reserve`), or a claim that filled the room it had. New rows of these
        # are written due, not handed over, so their oldest rows go first; a finished attempt of
        # one of them or of their vendors, or any while `_more_due`, wakes the claims; any other
        # does not, so a sender whose queue is full of one busy endpoint does not claim, and find
        # nothing, after every attempt (that cost PostgreSQL about 10 µs per delivered event).
        self._backlogged: dict[uuid.UUID, uuid.UUID | None] = {}
        self._backlogged_vendors: set[uuid.UUID | None] = set()
        # Those whose due rows the mapper is writing, not yet committed (so no claim sees them yet).
        self._uncommitted: dict[uuid.UUID, uuid.UUID | None] = {}
        self._reserved_total = 0  # new rows the mapper is writing leased to this sender (`reserve`)

    async def run(self) -> None:
        # No cap per host: the per-endpoint slots bound each endpoint, and endpoints of different
        # vendors on one host (a shared receiving service) must not queue for each other's
        # connections, or one hanging endpoint would slow the others. Connections are kept alive.
        connector = aiohttp.TCPConnector(
            limit=self._concurrency_max, limit_per_host=0,
            resolver=None if self._allow_private else PublicOnlyResolver(),
        )
        # The total timeout bounds an attempt from the connection (its DNS lookup included) to the
        # last byte read. No cookie is kept: a receiver's cookie would otherwise go to every other
        # endpoint on its host, another vendor's too, and a hostile one could grow the jar without
        # bound. Nothing asks for a compressed answer (none is decompressed; only the status counts).
        self._http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=ATTEMPT_S_MAX),
                                           headers={"User-Agent": USER_AGENT}, auto_decompress=False,
                                           cookie_jar=aiohttp.DummyCookieJar(),
                                           skip_auto_headers=("Accept", "Accept-Encoding"))
        metrics.WEBHOOK_IN_FLIGHT.set_function(lambda: len(self._in_flight))
        recorder = asyncio.create_task(self._record_forever(), name="webhook-recorder")
        try:
            while True:
                raise_if_cancelled()
                claimed_at = time.monotonic()
                self._wake.clear()
                try:
                    if claimed_at - self._endpoints_checked_at >= ENDPOINTS_CHECK_S:
                        await self._check_endpoints()
                        self._endpoints_checked_at = claimed_at
                    self._more_due = await self._claim_round()
                except store.StoreError as error:
                    log.info("cannot claim deliveries (%s); retrying", error)
                # New rows wake the claims, and so does a finished attempt when due rows wait for
                # its slot; retries come due without a wake-up, so they are looked for by the poll.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SENDER_POLL_S):
                        await self._wake.wait()
                # At most one claim per CLAIM_INTERVAL_S: the rows of several mapping rounds, and
                # the slots of several finished attempts, are taken by one statement.
                await asyncio.sleep(max(0.0, claimed_at + CLAIM_INTERVAL_S - time.monotonic()))
        finally:
            try:
                held = [*self._in_flight.values(), recorder]
                for task in held:
                    task.cancel()
                await asyncio.gather(*held, return_exceptions=True)
            finally:  # a second cancellation (a second Ctrl-C) must not leave the session open
                metrics.WEBHOOK_IN_FLIGHT.set_function(lambda: 0)
                http, self._http = self._http, None
                await http.close()

    async def _claim_round(self) -> bool:
        """Claim what the queue has room for; True when there may be due rows it had no room for
        (then a finished attempt wakes the claims, else only new rows or the poll do)."""
        free = HELD_PER_SLOT * self._concurrency_max - len(self._in_flight) - self._reserved_total
        if free <= 0:
            return True
        room = ws.Room(free, {endpoint: max(0, self._endpoint_room - held) for endpoint, held in self._per_endpoint.items()},
                       self._endpoint_room, dict(self._per_vendor), self._vendor_max)
        unseen = dict(self._uncommitted)  # committed during the claim, perhaps after what it saw
        async with self._pool.connection() as conn:
            claimed = await ws.claim_due(conn, room, lease_s=LEASE_S)
        taken: dict[uuid.UUID, int] = {}
        for row in claimed:
            taken[row.endpoint_id] = taken.get(row.endpoint_id, 0) + 1
            self._hold(row.endpoint_id, row.vendor_id, 1)
            self._start(row)
        self._backlogged = self._still_backlogged(room, claimed, taken) | unseen | self._uncommitted
        self._backlogged_vendors = set(self._backlogged.values())
        return len(claimed) == free

    def _still_backlogged(self, room: ws.Room, claimed: list[ws.Claimed],
                          taken: dict[uuid.UUID, int]) -> dict[uuid.UUID, uuid.UUID | None]:
        """The endpoints that may still have due rows after a claim: all it knew of, if the claim
        filled the queue; else those whose room, or whose vendor's, the claim filled."""
        known = {**self._backlogged, **{row.endpoint_id: row.vendor_id for row in claimed}}
        if len(claimed) == room.total:
            return known
        return {endpoint: vendor for endpoint, vendor in known.items()
                if taken.get(endpoint, 0) >= room.endpoints.get(endpoint, room.endpoint_max)
                or self._per_vendor.get(vendor, 0) >= room.vendor_max}

    @property
    def _endpoint_room(self) -> int:
        return HELD_PER_SLOT * self._endpoint_max

    def _hold(self, endpoint_id: uuid.UUID, vendor_id: uuid.UUID | None, change: int) -> None:
        """Count rows held (or given up, `change` < 0) for an endpoint and its vendor."""
        for counts, key in ((self._per_endpoint, endpoint_id), (self._per_vendor, vendor_id)):
            left = counts.get(key, 0) + change
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)

    def reserve(self, rows: list[tuple[uuid.UUID, uuid.UUID]]) -> list[bool]:
        """Which of these new rows (endpoint and vendor, in order) this sender takes at once,
        within its bounded queue, overall, per endpoint and per vendor; none of an endpoint that
        may have due rows, so that its oldest rows go first. Each taken row is then either handed
        over (`hand`) or released (`release`)."""
        if self._http is None:  # not sending (yet, or any more): the claims take the rows later
            return [False] * len(rows)
        free = HELD_PER_SLOT * self._concurrency_max - len(self._in_flight) - self._reserved_total
        taken = []
        for endpoint_id, vendor_id in rows:
            take = (free > 0 and endpoint_id not in self._backlogged
                    and self._per_endpoint.get(endpoint_id, 0) < self._endpoint_room
                    and self._per_vendor.get(vendor_id, 0) < self._vendor_max)
            if take:
                free -= 1
                self._hold(endpoint_id, vendor_id, 1)
                self._reserved_total += 1
            else:  # written due: a claim takes it, oldest first, once there is room
                self._backlogged[endpoint_id] = self._uncommitted[endpoint_id] = vendor_id
                self._backlogged_vendors.add(vendor_id)
            taken.append(take)
        return taken

    def release(self, rows: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """Give up the rows `reserve` took (their transaction did not commit)."""
        self._uncommitted.clear()
        for endpoint_id, vendor_id in rows:
            self._hold(endpoint_id, vendor_id, -1)
            self._reserved_total -= 1

    def hand(self, rows: list[ws.Claimed]) -> None:
        """Take over rows written leased to this sender (their transaction committed, with the
        rows `reserve` did not take, which the claims can see from now on)."""
        self._uncommitted.clear()
        self._reserved_total -= len(rows)
        for row in rows:
            self._start(row)

    def _start(self, row: ws.Claimed) -> None:
        """Attempt a held row (counted in `_hold`) once its slots are free."""
        if row.endpoint_id not in self._endpoint_slots:
            self._endpoint_slots[row.endpoint_id] = asyncio.Semaphore(self._endpoint_max)
        # One task per held row: it waits for its slots like any other. Unnamed (the default name
        # costs a counter, a name with the event id formatted a UUID for every row), and its own
        # `finally` gives the row up, with no done-callback to schedule.
        self._in_flight[row] = asyncio.create_task(self._deliver(row))

    async def _deliver(self, row: ws.Claimed) -> None:
        try:
            async with self._endpoint_slots[row.endpoint_id], self._slots:
                await self._attempt(row)
        except Exception:  # the row's lease ends and it is attempted again; the other rows go on
            log.exception("webhook delivery task failed")
        finally:
            self._finished(row)

    def _finished(self, row: ws.Claimed) -> None:
        self._in_flight.pop(row, None)
        self._hold(row.endpoint_id, row.vendor_id, -1)
        if row.endpoint_id not in self._per_endpoint:
            self._endpoint_slots.pop(row.endpoint_id, None)
        if self._more_due or row.endpoint_id in self._backlogged or row.vendor_id in self._backlogged_vendors:
            self._wake.set()  # a slot is free, and due rows may wait for one

    async def _attempt(self, row: ws.Claimed) -> None:
        try:
            target = await self._endpoint(row.endpoint_id)
        except store.StoreError:
            raise  # the database's fault, not the row's: its lease ends and it is attempted again
        except _Undeliverable as never:
            self._outcome(row, None, _error_text(never), final=True)
            return
        except Exception as refused:  # e.g. a host now private, a secret that does not decrypt
            self._outcome(row, None, _error_text(refused))
            return
        if target is None:
            return  # deleted since the claim: nothing starts after a delete
        started = time.monotonic()
        status_code, error = await self._post(target, row)
        metrics.WEBHOOK_ATTEMPT_SECONDS.observe(time.monotonic() - started)
        self._outcome(row, status_code, error)

    def _outcome(self, row: ws.Claimed, status_code: int | None, error: str | None, *, final: bool = False) -> None:
        """Count the attempt and queue it for the recorder; a `final` failure is not retried."""
        attempts = row.attempts + 1
        if status_code is not None and 200 <= status_code < 300:
            outcome, retry_in_s = "delivered", None
            latency = (dt.datetime.now(dt.timezone.utc) - row.committed_at).total_seconds()
            metrics.WEBHOOK_DELIVERY_LATENCY_SECONDS.observe(max(0.0, latency))
            _DELIVERED.inc()
        else:
            retry_in_s = None if final else events.retry_delay_s(attempts)
            outcome = "pending" if retry_in_s is not None else "failed"
            (_RETRIED if retry_in_s is not None else _FAILED).inc()
        self._outcomes.append(ws.Attempt(row, outcome, status_code, error, retry_in_s))
        self._outcome_ready.set()

    async def _post(self, target: _Target, row: ws.Claimed) -> tuple[int | None, str | None]:
        headers = events.signed_headers(target.key, event_id=str(row.event_id), timestamp=int(time.time()),
                                          body=row.payload)
        try:
            async with self._http.post(target.url, data=row.payload, headers=headers, allow_redirects=False) as response:
                await response.content.read(RESPONSE_BYTES_MAX)
                return response.status, None
        except asyncio.CancelledError:
            raise
        except TimeoutError:  # the session's total timeout, ATTEMPT_S_MAX
            return None, f"no answer within {ATTEMPT_S_MAX:g} s"
        except Exception as error:  # DNS, a refused address, TLS, a reset connection: all are a failed attempt
            return None, _error_text(error)

    async def _record_forever(self) -> None:
        """Record the attempts made since the last round, in one statement. If the database stays
        away, or the statement fails for any other reason, they are dropped: each row's lease runs
        out and it is simply attempted again (at least once, never lost). The loop itself never
        ends but by cancellation: it once died on a `DataError`, silently, and from then on no
        attempt was recorded and every row went out again at each lease's end."""
        while True:
            await self._outcome_ready.wait()
            await asyncio.sleep(RECORD_INTERVAL_S)
            self._outcome_ready.clear()
            while self._outcomes:
                batch, self._outcomes = self._outcomes[:RECORD_BATCH_MAX], self._outcomes[RECORD_BATCH_MAX:]
                try:
                    await self._record(batch)
                except Exception:  # a bug must not stop the recording of every later attempt
                    metrics.WEBHOOK_RECORD_FAILURES.inc(len(batch))
                    log.exception("cannot record %d webhook attempts; their rows are attempted again once"
                                  " their lease ends", len(batch))

    async def _record(self, batch: list[ws.Attempt]) -> None:
        for _ in range(RECORD_TRIES_MAX):
            try:
                async with self._pool.connection() as conn:
                    await ws.record_attempts(conn, batch)
                return
            except store.StoreError as error:
                log.info("cannot record %d webhook attempts (%s); retrying", len(batch), error)
                await asyncio.sleep(SENDER_POLL_S)

    async def _check_endpoints(self) -> None:
        """Drop the cached endpoints deleted since, if any endpoint was registered or deleted."""
        async with self._pool.connection() as conn:
            version = await ws.endpoints_version(conn)
            if version == self._endpoints_version:
                return
            live = await ws.live_among(conn, list(self._endpoints))
        for endpoint_id in [known for known in self._endpoints if known not in live]:
            del self._endpoints[endpoint_id]
        self._endpoints_version = version

    async def _endpoint(self, endpoint_id: uuid.UUID) -> _Target | None:
        """The live endpoint's target, or None once it is deleted; `_Undeliverable` if its URL
        does not parse (as registration parses it today: an older release took URLs that cannot
        be sent to); `UrlNotAllowed` (not cached, so the next attempt checks again) if, unless
        private addresses are allowed, its host now resolves to a non-public address; the
        keyring's error if its secret does not decrypt (a key missing from LEDGER_WEBHOOK_KEY).

        The URL is checked once per endpoint, not per attempt: its scheme and an IP literal never
        change, and the host's addresses are judged on every lookup a connection uses, by the
        connector's resolver (`PublicOnlyResolver`), so a later change of its DNS answer
        (rebinding) is refused there."""
        cached = self._endpoints.get(endpoint_id)
        if cached is not None:
            return cached
        async with self._pool.connection() as conn:
            row = await ws.endpoint(conn, endpoint_id)
        if row is None:
            return None
        try:
            url = events.parse_url(row.url)
        except events.UrlNotAllowed as error:
            raise _Undeliverable(str(error)) from None
        await events.check_url(row.url, allow_private=self._allow_private)
        if len(self._endpoints) >= ENDPOINT_CACHE_MAX:
            self._endpoints.clear()
        key = events.secret_key(self._keyring.decrypt(row.secret_encrypted))
        self._endpoints[endpoint_id] = found = _Target(url, key)
        return found


class _Undeliverable(Exception):
    """The endpoint as stored can never be sent to: each of its rows fails at its attempt."""


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:ERROR_CHARS_MAX]
