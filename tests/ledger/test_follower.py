"""The one journal follower (`ledger.follower`): its locked cursor, contiguous runs, doorbells and
its recovery when NATS or its consumer goes away, against the real PostgreSQL and NATS."""

from __future__ import annotations

import nats
import nats.js.errors

from ledger import bus
from tests.conftest import eventually


async def _stream_last_seq(js) -> int:
    return (await js.stream_info(bus.STREAM)).state.last_seq


async def test_a_deleted_consumer_is_made_again_and_rings_the_doorbells_again(stack):
    """Issue 24 #7: the projector's consumer is deleted while NATS stays up. The projector must
    make it again and take the next events through it, not follow the journal by polling for good."""
    durable = f"projector-{stack.settings.projector_name}"
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
