"""NATS JetStream: the stream, the subjects and the headers of the ledger's events, in one place.

NATS is transport, not truth: every event can be rebuilt from the journal, so a NATS outage only
delays events (they wait behind the publisher cursor), it never loses them. For the same reason the stream is
bounded (`Settings.nats.stream_max_age_s`, `Settings.nats.stream_max_bytes`, oldest discarded first): an
event that ages out before a projector read it costs nothing, because the projector follows the
journal from its own cursor whenever the journal head is ahead of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

import itertools
import json

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

import schemas
from ledger import metrics
from ledger.config import Nats as NatsSettings

log = logging.getLogger("ledger.bus")

STREAM = "LEDGER"
SUBJECT = "ledger.v1.transfers.committed"
# Core NATS (not JetStream): the projector announces its watermark so readers waiting for
# `min_position` wake at once instead of polling the database.
WATERMARK_SUBJECT = "ledger.v1.projector.watermark"
WATERMARK_BYTES_MAX = 19  # the digits of the largest position, 2^63 - 1
DUPLICATE_WINDOW_S = 300.0
STREAM_MAX_AGE_S_DEFAULT = 7 * 86_400.0  # as `Settings.nats.stream_max_age_s`
STREAM_MAX_BYTES_DEFAULT = 1024**3  # as `Settings.nats.stream_max_bytes`
PUBLISH_ACK_TIMEOUT_S = 5.0
CONNECT_RETRY_S = 0.5
CLOSE_TIMEOUT_S = 2.0
MSG_ID = "Nats-Msg-Id"
# A follower's durable consumer: an unacked event comes again after this, and at most this many
# are out unacked (a stuck follower holds the stream's redeliveries bounded).
CONSUMER_ACK_WAIT_S = 30
CONSUMER_ACK_PENDING_MAX = 20_000
# A pull request ends on the server this much before the fetch that sent it gives up, so that its
# end (status 408) normally arrives within the fetch.
PULL_EXPIRES_MARGIN_S = 0.05
# JetStream's status codes on a pull request's replies: a heartbeat; the end of a request (no
# messages left, expired, or a conflict such as a deleted consumer).
STATUS_HEARTBEAT = "100"
STATUS_REQUEST_ENDED = frozenset({"404", "408", "409"})
# A 409 that ends the request because the consumer is gone: the fetch raises, so the follower
# subscribes again (which makes the consumer anew) instead of taking the silence for no events.
CONSUMER_DELETED = "Consumer Deleted"
REQUEST_ID = "X-Request-Id"


def raise_if_cancelled() -> None:
    """nats-py waits through `asyncio.wait_for`, which on Python 3.11 can swallow a cancellation
    that arrives as the inner wait completes; a loop around NATS calls would then never stop.
    The task still counts the request (`cancelling()`), so loops check it on every round."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _doorbell_settings(config: ConsumerConfig) -> tuple:
    """What a follower's consumer must have, and cannot be trusted to have if an earlier version
    made it. JetStream reports `ack_wait` in seconds as a float; 30 == 30.0 compares equal."""
    return (config.ack_policy, config.ack_wait, config.max_ack_pending, config.filter_subject)


class Doorbells:
    """A follower's pull subscription to its durable consumer, fetched a batch at a time.

    nats-py's `PullSubscription.fetch` awaits every message of a batch through
    `Subscription.next_msg`, which makes two tasks, a timer and a `uuid4` per message; a follower
    of a few thousand events a second spent a large share of its CPU there. Here one callback
    collects the replies to the current pull request and one event wakes the fetch. Each request
    has its own reply subject, so the end of an earlier request that the fetch stopped waiting for
    cannot end a later one; an earlier request's late events are kept, as they are doorbells too."""

    def __init__(self, nc: Client, durable: str) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable}"
        self._inbox = nc.new_inbox()
        self._requests = itertools.count()
        self._reply = ""
        self._batch_max = 0
        self._messages: list[Msg] = []
        self._ended = asyncio.Event()
        self._error: Msg | None = None
        self._subscription = None

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    async def close(self) -> None:
        """Stop taking replies (a new subscription of the same durable replaced this one)."""
        if self._subscription is not None:
            with contextlib.suppress(Exception):  # NATS away: the subscription went with the connection
                await self._subscription.unsubscribe()
            self._subscription = None

    async def fetch(self, batch_max: int, *, timeout: float) -> list[Msg]:
        """Up to `batch_max` events: those the consumer holds now, else the first to come within
        `timeout` seconds and those with it. Raises `nats.errors.TimeoutError` if none came."""
        self._reply = f"{self._inbox}.{next(self._requests)}"
        self._batch_max = batch_max
        self._ended.clear()
        self._error = None
        expires_ns = int(max(timeout - PULL_EXPIRES_MARGIN_S, PULL_EXPIRES_MARGIN_S) * 1e9)
        request = {"batch": batch_max - len(self._messages), "expires": expires_ns, "no_wait": True}
        if request["batch"] > 0:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._reply)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), timeout)
        messages, self._messages = self._messages, []
        if self._error is not None and not messages:
            raise APIError.from_msg(self._error)
        if not messages:
            raise nats.errors.TimeoutError
        return messages

    async def _on_reply(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:  # an event: it comes on its own subject, not on the request's
            self._messages.append(msg)
            if len(self._messages) >= self._batch_max:
                self._ended.set()
        elif status != STATUS_HEARTBEAT and msg.subject == self._reply:
            if status not in STATUS_REQUEST_ENDED or msg.headers.get("Description") == CONSUMER_DELETED:
                self._error = msg
            self._ended.set()


class EventBus:
    """A NATS connection that keeps reconnecting, and the JetStream stream of journal entries."""

    @classmethod
    def from_settings(cls, nats: "NatsSettings", *, name: str, manage_stream: bool = True) -> "EventBus":
        """The bus of a process, from its `settings.nats` section."""
        return cls(nats.url, name=name, stream_replicas=nats.stream_replicas, stream_max_age_s=nats.stream_max_age_s,
                   stream_max_bytes=nats.stream_max_bytes, manage_stream=manage_stream)

    def __init__(
        self, url: str, *, name: str, stream_replicas: int, stream_max_age_s: float = STREAM_MAX_AGE_S_DEFAULT,
        stream_max_bytes: int = STREAM_MAX_BYTES_DEFAULT, manage_stream: bool = True,
    ) -> None:
        """`stream_replicas` is `Settings.nats.stream_replicas`: a clustered deployment sets 3 so the
        stream survives the loss of a NATS node; one server (`ledger dev`, the tests) holds 1.
        `stream_max_age_s` and `stream_max_bytes` are the stream's retention (`Settings` of the
        same names); whichever is reached first discards the oldest events. `manage_stream=False`
        is for a consumer that may not create or update the stream (the webhook worker logs in to
        NATS as `reader`): it connects without touching the stream's configuration."""
        self._url = url
        self._name = name
        self._stream_replicas = stream_replicas
        self._stream_max_age_s = stream_max_age_s
        self._stream_max_bytes = stream_max_bytes
        self._manage_stream = manage_stream
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._connecting: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._failing_subscriptions: set[str] = set()  # durables whose last subscribe failed while connected
        self._doorbells: dict[str, Doorbells] = {}  # the current subscription of each durable

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    def start(self) -> None:
        """Connect in the background: a service must come up, and commit, while NATS is down."""
        self._connecting = asyncio.create_task(self._connect_forever(), name=f"{self._name}-nats-connect")

    async def _connect_forever(self) -> None:
        while True:
            raise_if_cancelled()
            try:
                nc = await nats.connect(
                    self._url.split(","),  # a cluster's seed servers, comma-separated
                    name=self._name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=CONNECT_RETRY_S,
                    connect_timeout=2,
                    error_cb=self._on_error,
                )
                self.nc, self.js = nc, nc.jetstream(timeout=PUBLISH_ACK_TIMEOUT_S)
                if self._manage_stream:
                    await self.ensure_stream()
                self._ready.set()
                return
            except Exception as error:
                log.info("NATS not reachable yet (%s); retrying", error)
                if self.nc is not None and not self.nc.is_closed:
                    await self.nc.close()
                self.nc = self.js = None
                await asyncio.sleep(CONNECT_RETRY_S)

    async def _on_error(self, error: Exception) -> None:
        log.debug("NATS: %s", error)

    async def ensure_stream(self) -> None:
        config = StreamConfig(
            name=STREAM,
            subjects=[SUBJECT],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            duplicate_window=min(DUPLICATE_WINDOW_S, self._stream_max_age_s),
            num_replicas=self._stream_replicas,
            max_age=self._stream_max_age_s,
            max_bytes=self._stream_max_bytes,
            discard=DiscardPolicy.OLD,
        )
        assert self.js is not None
        try:
            await self.js.add_stream(config)
        except BadRequestError:  # it exists with another configuration
            await self._update_stream(config)

    async def _update_stream(self, config: StreamConfig) -> None:
        """Only the projector's NATS login may change the stream (deploy/nats.conf): another
        process configured otherwise keeps the stream as it is and carries on. A refused request
        gets no answer, so the refusal shows as a timeout."""
        assert self.js is not None
        try:
            await self.js.update_stream(config)
        except (nats.errors.TimeoutError, APIError) as error:
            log.warning("the %s stream differs from this process's settings and it may not change it"
                        " (%s): the projector applies them", STREAM, error or type(error).__name__)

    async def subscribe_doorbells(self, durable: str, *, from_start: bool):
        """A durable pull subscription to the journal's events, as every follower of the journal
        (projector, webhook worker) takes them: cumulative acks (a follower acks the last event of
        each fetched batch), a bounded number in flight. `from_start`: a new consumer starts at
        the stream's first event, else at the next one. A bus that manages the stream makes sure
        of it first (it may have been deleted too)."""
        assert self.js is not None
        try:
            if self._manage_stream:
                await self.ensure_stream()
            await self._ensure_consumer(durable, from_start=from_start)
            subscription = Doorbells(self.nc, durable)
            await subscription.start()
            previous, self._doorbells[durable] = self._doorbells.get(durable), subscription
            if previous is not None:  # a follower subscribing again (NATS was away): its old inbox goes
                await previous.close()
        except Exception as error:
            if self.connected:
                # NATS answers but will not give us the consumer (permissions, a conflicting
                # consumer, the stream's limits): the caller falls back to following the journal,
                # slower, so say it loudly once, and count every failure.
                metrics.DOORBELL_SUBSCRIBE_FAILURES.labels(durable).inc()
                if durable not in self._failing_subscriptions:
                    self._failing_subscriptions.add(durable)
                    log.error("cannot subscribe %s to the journal's events although NATS is up (%s); following"
                              " the journal without doorbells until it can", durable, error)
            raise
        if durable in self._failing_subscriptions:
            self._failing_subscriptions.discard(durable)
            log.warning("%s subscribed to the journal's events again", durable)
        return subscription

    @staticmethod
    def _doorbell_config(durable: str, *, from_start: bool) -> ConsumerConfig:
        # AckPolicy.ALL: a follower acks only the last event of each fetched batch and the server
        # takes every earlier one as acked with it, one ack message per batch instead of one per
        # event, for the follower to send and for the server to apply to the consumer's state.
        return ConsumerConfig(
            name=durable,
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
            ack_policy=AckPolicy.ALL,
            ack_wait=CONSUMER_ACK_WAIT_S,
            max_ack_pending=CONSUMER_ACK_PENDING_MAX,
            filter_subject=SUBJECT,
        )

    async def _ensure_consumer(self, durable: str, *, from_start: bool) -> None:
        """The durable consumer with the doorbells' settings: kept if it has them, made if missing,
        and made anew if it exists with others. JetStream cannot change a consumer's ack policy in
        place: a consumer made with explicit acks by an earlier version, acked only once per
        batch, would redeliver the rest after `ack_wait` and stall once `max_ack_pending` events
        are out. Deleting it loses nothing: events are doorbells, and a follower reads the
        journal from its own cursor, so the replacement starts at the next event, whatever
        `from_start` says (replaying the whole stream as doorbells would only cost CPU). Each
        follower's NATS login may get the info of, delete and create its own durable only
        (deploy/nats.conf, tools/embedded.py `consumer_subjects`)."""
        assert self.js is not None
        config = self._doorbell_config(durable, from_start=from_start)
        try:
            existing = (await self.js.consumer_info(STREAM, durable)).config
        except NotFoundError:
            existing = None
        if existing is not None:
            if _doorbell_settings(existing) == _doorbell_settings(config):
                return
            log.warning("replacing the consumer %s: its settings %s are not the wanted %s", durable,
                        _doorbell_settings(existing), _doorbell_settings(config))
            with contextlib.suppress(NotFoundError):  # another instance of the follower replaced it first
                await self.js.delete_consumer(STREAM, durable)
            config = self._doorbell_config(durable, from_start=False)
        # Creating a consumer that exists with the same settings (another instance was first) is
        # not an error in JetStream.
        await self.js.add_consumer(STREAM, config)

    async def publish_entries(
        self, entries: list[schemas.JournalEntry], *, request_ids: dict[int, str] | None = None
    ) -> list[int]:
        """Publish every entry and return the positions JetStream acknowledged (duplicates included:
        JetStream dropping a repeat inside its window still means the event is in the stream).
        `request_ids` maps a position to the id of the request that produced it: entries of one
        batch come from different requests, so the header is set per entry."""
        request_ids = request_ids or {}
        if not self.connected or self.js is None:
            return []
        futures = []
        for entry in entries:
            headers = {MSG_ID: str(entry.transfer_id)}
            if entry.position in request_ids:
                headers[REQUEST_ID] = request_ids[entry.position]
            futures.append((entry.position, await self.js.publish_async(SUBJECT, schemas.encode(entry), headers=headers)))
        done, _ = await asyncio.wait([f for _, f in futures], timeout=PUBLISH_ACK_TIMEOUT_S)
        acked = []
        for position, future in futures:
            if future in done and future.exception() is None:
                acked.append(position)
            elif not future.done():
                future.cancel()
        return acked

    async def announce_watermark(self, position: int) -> None:
        if self.connected and self.nc is not None:
            await self.nc.publish(WATERMARK_SUBJECT, str(position).encode())

    async def on_watermark(self, callback: Callable[[int], Awaitable[None] | None]) -> None:
        assert self.nc is not None

        async def handler(msg) -> None:
            # Anyone allowed on the subject could send anything: a watermark is a hint, never a
            # fact, and one that is not a plain position is dropped.
            text = msg.data[:WATERMARK_BYTES_MAX]
            if not text.isdigit() or len(msg.data) > WATERMARK_BYTES_MAX:
                return
            result = callback(int(text))
            if asyncio.iscoroutine(result):
                await result

        await self.nc.subscribe(WATERMARK_SUBJECT, cb=handler)

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self.nc is not None and not self.nc.is_closed:
            # close, not drain: nothing here needs draining (publishes are awaited, the projector
            # acks explicitly), and nats-py's drain leaves a cancelled future nobody retrieves.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), CLOSE_TIMEOUT_S)
