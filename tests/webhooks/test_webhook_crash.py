"""Nothing is lost across a crash of the webhook worker: a real `ledger webhooks` process is
SIGKILLed while its attempts are in flight, started again, and every event is then delivered at
least once; a repeat carries the same `webhook-id` and body, and every signature verifies."""

from __future__ import annotations

import os
import signal
import time

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.conftest import eventually
from tests.plugins import children
from tests.plugins.receivers import Receiver

pytestmark = pytest.mark.slow  # child processes: a `ledger webhooks` killed mid-flight

PAYMENTS = 10
SLOW_S = 3.0  # the receiver's answer time while the worker is to be killed
DELIVERED_S_MAX = 90.0  # the lease (30 s) plus a loaded machine


async def test_a_worker_killed_mid_flight_loses_no_event(stack, tmp_path):
    receiver = await Receiver(delay_s=SLOW_S).start()
    vendor = await stack.vendor()
    created = await stack.client.post(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token,
                                      json={"url": receiver.url})
    assert created.status == 201, created.text
    endpoint, secret = created.body["id"], created.body["secret"]
    payer = await stack.funded_wallet(PAYMENTS * 100)
    env = children.stack_environment(stack, LEDGER_WEBHOOK_KEY=stack.settings.webhooks.key,
                                     LEDGER_WEBHOOK_ALLOW_PRIVATE="1", LEDGER_LOG_FORMAT="text")
    worker = children.start(["webhooks"], tmp_path / "worker.log", env)
    try:
        for _ in range(PAYMENTS):
            reply = await stack.transfer(payer.token, payer.account_id, vendor.account_id, 100)
            assert reply.status == 201, reply.text

        async def in_flight():
            return receiver.active > 0

        await eventually(in_flight, timeout_s=60)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        killed_at = time.monotonic()
        receiver.delay_s = 0.0
        worker = children.start(["webhooks"], tmp_path / "worker.log", env)

        async def all_delivered():
            reply = await stack.client.get(f"/v1/vendors/{vendor.account_id}/webhooks/{endpoint}/deliveries",
                                           token=vendor.token)
            items = reply.body["items"]
            return items if len(items) == PAYMENTS and all(i["status"] == "delivered" for i in items) else None

        items = await eventually(all_delivered, timeout_s=DELIVERED_S_MAX, interval_s=0.5)
    finally:
        children.stop(worker, timeout_s=20)
        await receiver.stop()

    print(f"\ndelivered {PAYMENTS} events {time.monotonic() - killed_at:.1f} s after the kill; "
          f"{len(receiver.requests)} requests in all")
    seen: dict[str, bytes] = {}
    for request in receiver.requests:
        event = StandardWebhook(secret).verify(request.body, request.headers)
        assert request.headers["webhook-id"] == event["id"]
        assert seen.setdefault(event["id"], request.body) == request.body  # a repeat is the same event
    assert set(seen) == {item["event_id"] for item in items}
    assert len(receiver.requests) >= PAYMENTS
