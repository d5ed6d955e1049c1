"""The one journal follower (`ledger.follower`): its locked cursor, contiguous runs, doorbells and
its recovery when NATS or its consumer goes away, against the real PostgreSQL and NATS."""

from __future__ import annotations

import pytest
import asyncio
import contextlib
import logging
import uuid

import msgspec
import nats
import nats.js.errors
import psycopg
import pytest_asyncio

from ledger import bus, db, store
from ledger.bus import EventBus
from ledger.follower import JournalFollower
from tests.conftest import eventually

LOG = logging.getLogger("tests.follower")


class Recorder(JournalFollower):
    """A follower whose cursor is kept in memory and whose effect is a list of the positions it
    wrote: what the base does (pages, runs, the loop, doorbells) is what is under test."""

    page_max = 2

    def __init__(self, pool, *, start: int, fail: list[Exception] | None = None, hole: int | None = None,
                 bus: EventBus | None = None, durable: str | None = None) -> None:
        super().__init__(name="test follower", pool=pool, log=LOG, bus=bus, durable=durable)
        self.cursor = start
        self.written: list[int] = []
        self.rung: list[int] = []  # the positions the doorbells announced
        self.steps = 0
        self._fail = list(fail or [])
        self.hole = hole  # a position read_page leaves out, as if it had not committed yet

    async def open_cursor(self, conn) -> int:
        return self.cursor

    async def lock_cursor(self, conn) -> int:
        return self.cursor

    async def read_page(self, conn, after: int) -> list:
        page = await super().read_page(conn, after)
        return [entry for entry in page if entry.position != self.hole]

    async def write(self, conn, run: list) -> None:
        if self._fail:
            raise self._fail.pop(0)
        self.written.extend(entry.position for entry in run)

    async def stepped(self, run: list) -> None:
        self.steps += 1
        if run:
            self.cursor = run[-1].position

    async def round(self, doorbells) -> None:
        self.rung.extend(bus_position(message) for message in doorbells)
        await super().round(doorbells)


def bus_position(message) -> int:
    return msgspec.json.decode(message.data)["position"]


@pytest_asyncio.fixture
async def pool(stack):
    pool = db.make_pool(stack.database_url, role=store.PROJECTOR_ROLE, size_max=1)
    await pool.open(wait=True)
    yield pool
    await pool.close()


async def _head_after_transfers(stack, count: int) -> int:
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    for _ in range(count):
        paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1)
        assert paid.status == 201, paid.text
    return paid.body["position"]


async def test_follow_reads_pages_to_the_head_and_stops_at_a_hole(stack, pool):
    head = await _head_after_transfers(stack, 5)
    start = head - 5
    follower = Recorder(pool, start=start, hole=start + 3)
    assert await follower.follow() == start + 2  # the run ends before the entry not committed yet
    assert follower.written == [start + 1, start + 2]
    follower.hole = None  # it committed
    assert await follower.follow(until=head) == head
    assert follower.written == list(range(start + 1, head + 1))
    assert follower.position == follower.cursor == head


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_a_failed_step_keeps_the_cursor_and_the_loop_logs_a_bug_apart_from_an_outage(stack, pool, caplog):
    head = await _head_after_transfers(stack, 1)
    follower = Recorder(pool, start=head - 1, fail=[ValueError("a bug"), psycopg.OperationalError("the database is away")])
    with caplog.at_level(logging.INFO, logger=LOG.name):
        task = asyncio.create_task(follower.run())
        try:
            await eventually(lambda: _is(follower.written == [head]), what="the entry written after two failed rounds")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    rounds = [r for r in caplog.records if "test follower round failed" in r.getMessage()]
    assert [(r.levelno, r.exc_info is not None) for r in rounds] == [(logging.ERROR, True), (logging.INFO, False)]
    assert follower.cursor == head


async def test_doorbells_ring_the_follower_and_are_acked_and_a_deleted_consumer_is_made_again(stack, pool):
    head = await _head_after_transfers(stack, 1)
    durable = f"test-follower-{uuid.uuid4().hex[:8]}"
    events = EventBus(stack.nats.url, name=durable, stream_replicas=stack.settings.nats.stream_replicas,
                          manage_stream=False)
    events.start()
    assert await events.wait_connected(10)
    follower = Recorder(pool, start=head, bus=events, durable=durable)
    task = asyncio.create_task(follower.run())
    client = await nats.connect(stack.nats.url, allow_reconnect=False)
    js = client.jetstream()
    try:
        for _ in range(2):  # once as made, once made again after its deletion
            await eventually(lambda: _consumer_exists(js, durable), what="the follower's consumer")
            position = await _head_after_transfers(stack, 1)
            await eventually(lambda: _is(position in follower.rung), what="the doorbell of the new entry")
            await eventually(lambda: _is(position in follower.written), what="the new entry written")
            await eventually(lambda: _acked(js, durable), what="the doorbells acked")
            await js.delete_consumer(bus.STREAM, durable)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(bus.STREAM, durable)
        await client.close()
        await events.close()


async def _is(value: bool) -> bool:
    return value


async def _acked(js, durable: str) -> bool:
    info = await js.consumer_info(bus.STREAM, durable)
    return info.num_ack_pending == 0 and info.num_pending == 0


async def _stream_last_seq(js) -> int:
    return (await js.stream_info(bus.STREAM)).state.last_seq


async def test_a_deleted_consumer_is_made_again_and_rings_the_doorbells_again(stack):
    """Issue 24 #7: the projector's consumer is deleted while NATS stays up. The projector must
    make it again and take the next events through it, not follow the journal by polling for good."""
    durable = f"projector-{stack.settings.projector.name}"
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    client = await nats.connect(stack.nats.url, allow_reconnect=False)
    try:
        js = client.jetstream()
        await eventually(lambda: _consumer_exists(js, durable), what="the projector's consumer")
        await js.delete_consumer(bus.STREAM, durable)
        before = await _stream_last_seq(js)
        paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 7)
        assert paid.status == 201, paid.text

        async def published() -> int | None:
            last = await _stream_last_seq(js)
            return last if last > before else None

        last = await eventually(published, what="the transfer's event in the stream")

        async def rung_again() -> bool:
            try:
                info = await js.consumer_info(bus.STREAM, durable)
            except nats.js.errors.NotFoundError:
                return False
            return info.ack_floor.stream_seq >= last

        await eventually(rung_again, timeout_s=15, what="the new event taken through the projector's doorbells")
    finally:
        await client.close()


async def _consumer_exists(js, durable: str) -> bool:
    try:
        await js.consumer_info(bus.STREAM, durable)
    except nats.js.errors.NotFoundError:
        return False
    return True
