"""The followers' doorbell consumers, against the real NATS JetStream: cumulative acks (one per
fetched batch), and a durable left by an earlier version with other settings replaced on subscribe."""

from __future__ import annotations

import pytest
import asyncio
import uuid

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ledger import bus
from tests.conftest import eventually

FETCH_WAIT_S = 1.0
ACK_WAIT_S_SHORT = 1  # seconds; a redelivery, if any were due, comes within the test
TRANSFERS = 5


async def _connected_bus(url: str, name: str, **kw) -> bus.EventBus:
    events = bus.EventBus(url, name=name, stream_replicas=1, **kw)
    events.start()
    assert await events.wait_connected(10)
    return events


async def _create_explicit(js, durable: str) -> None:
    """The consumer as versions before AckPolicy.ALL made it."""
    await js.add_consumer(bus.STREAM, ConsumerConfig(
        durable_name=durable, deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=bus.CONSUMER_ACK_WAIT_S, max_ack_pending=bus.CONSUMER_ACK_PENDING_MAX, filter_subject=bus.SUBJECT))


async def _pay(stack, count: int) -> set[str]:
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    ids = set()
    for _ in range(count):
        paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1)
        assert paid.status == 201, paid.text
        ids.add(paid.body["id"])
    return ids


async def _fetch_until_seen(subscription, transfer_ids: set[str], *, ack_last: bool) -> list:
    """Fetch as a follower does until every one of `transfer_ids` has come; each batch's last
    message is acked when `ack_last`. Returns every message fetched."""
    fetched: list = []
    deadline = asyncio.get_running_loop().time() + 10
    while not transfer_ids <= {m.headers[bus.MSG_ID] for m in fetched}:
        assert asyncio.get_running_loop().time() < deadline, "the events did not come"
        try:
            batch = await subscription.fetch(100, timeout=FETCH_WAIT_S)
        except nats.errors.TimeoutError:
            continue
        fetched += batch
        if ack_last:
            await batch[-1].ack()
    return fetched


async def test_an_explicit_ack_durable_left_by_an_earlier_version_is_replaced_with_ack_all(stack):
    durable = f"doorbells-old-{uuid.uuid4().hex[:8]}"
    events = await _connected_bus(stack.nats.url, "doorbells-old")
    try:
        await _create_explicit(events.js, durable)
        old = await events.js.pull_subscribe(bus.SUBJECT, durable=durable, stream=bus.STREAM)
        await _fetch_until_seen(old, await _pay(stack, TRANSFERS), ack_last=True)
        # Why it must go: on the old consumer, acking the last of a batch leaves the rest out.
        info = await events.js.consumer_info(bus.STREAM, durable)
        assert info.num_ack_pending >= TRANSFERS - 1

        await events.subscribe_doorbells(durable, from_start=True)
        info = await events.js.consumer_info(bus.STREAM, durable)
        assert info.config.ack_policy == AckPolicy.ALL
        assert info.num_ack_pending == 0
        # The replacement starts at the next event: the follower reads the past from the journal.
        assert info.config.deliver_policy == DeliverPolicy.NEW
    finally:
        await events.close()


async def test_a_durable_with_the_wanted_settings_is_kept(stack):
    durable = f"doorbells-kept-{uuid.uuid4().hex[:8]}"
    events = await _connected_bus(stack.nats.url, "doorbells-kept")
    try:
        await events.subscribe_doorbells(durable, from_start=True)
        created = (await events.js.consumer_info(bus.STREAM, durable)).created
        await events.subscribe_doorbells(durable, from_start=True)
        info = await events.js.consumer_info(bus.STREAM, durable)
        assert info.created == created
        assert info.config.deliver_policy == DeliverPolicy.ALL
    finally:
        await events.close()


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_acking_the_last_of_each_batch_leaves_nothing_pending_and_nothing_redelivered(stack, monkeypatch):
    monkeypatch.setattr(bus, "CONSUMER_ACK_WAIT_S", ACK_WAIT_S_SHORT)
    durable = f"doorbells-all-{uuid.uuid4().hex[:8]}"
    events = await _connected_bus(stack.nats.url, "doorbells-all")
    try:
        subscription = await events.subscribe_doorbells(durable, from_start=False)
        fetched = await _fetch_until_seen(subscription, await _pay(stack, TRANSFERS), ack_last=True)
        last_seq = fetched[-1].metadata.sequence.stream

        async def all_acked():
            info = await events.js.consumer_info(bus.STREAM, durable)
            return info.num_ack_pending == 0 and info.ack_floor.stream_seq >= last_seq

        await eventually(all_acked, what="the batch acked by its last message")
        # Wait out several ack_waits by fetching: anything left unacked would come again. Events
        # that arrive meanwhile (an earlier test's hold expiring) are acked as a follower acks them,
        # else they would be redelivered for a reason that is not this batch's.
        again: list = []
        deadline = asyncio.get_running_loop().time() + 3 * ACK_WAIT_S_SHORT
        while asyncio.get_running_loop().time() < deadline:
            try:
                batch = await subscription.fetch(100, timeout=FETCH_WAIT_S)
            except nats.errors.TimeoutError:
                continue
            await batch[-1].ack()
            again += batch
        assert [m.metadata.sequence.stream for m in again if m.metadata.num_delivered > 1] == []
        assert all(m.metadata.sequence.stream > last_seq for m in again)
        assert (await events.js.consumer_info(bus.STREAM, durable)).num_redelivered == 0
    finally:
        await events.close()


async def test_the_reader_login_may_replace_its_consumer(tmp_path):
    """The webhook worker logs in as `reader` (may consume, may not publish or manage the stream);
    replacing its old consumer must be within those rights, as deploy/nats.conf grants them."""
    from tools.embedded import EmbeddedNats, free_port

    server = EmbeddedNats(data_dir=tmp_path / "nats", port=free_port(), auth=True)
    server.start()
    api = reader = None
    try:
        api = await _connected_bus(server.url_for("api"), "doorbells-api")  # creates the stream
        reader = await _connected_bus(server.url_for("reader"), "doorbells-reader", manage_stream=False)
        await _create_explicit(reader.js, "webhooks-main")
        await reader.subscribe_doorbells("webhooks-main", from_start=False)
        info = await reader.js.consumer_info(bus.STREAM, "webhooks-main")
        assert info.config.ack_policy == AckPolicy.ALL
    finally:
        for events in (reader, api):
            if events is not None:
                await events.close()
        server.stop()


async def test_a_fetch_returns_the_events_that_came_without_waiting_for_a_full_batch(stack):
    durable = f"doorbells-prompt-{uuid.uuid4().hex[:8]}"
    events = await _connected_bus(stack.nats.url, "doorbells-prompt")
    try:
        subscription = await events.subscribe_doorbells(durable, from_start=False)
        # Drain whatever other tests' events are still arriving, until a fetch finds none.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            assert asyncio.get_running_loop().time() < deadline, "the consumer never ran dry"
            try:
                await subscription.fetch(1000, timeout=0.3)
            except nats.errors.TimeoutError:
                break
        paid = await _pay(stack, 1)
        started = asyncio.get_running_loop().time()
        fetched = await _fetch_until_seen(subscription, paid, ack_last=True)
        # Far less than a fetch's timeout each: the fetch ended when the consumer ran dry.
        assert asyncio.get_running_loop().time() - started < FETCH_WAIT_S
        assert len(fetched) < 1000
    finally:
        await events.close()
