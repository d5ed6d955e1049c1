"""`ledger webhooks`: the webhook worker, a process of its own beside the API and the projector.

Why its own process: a receiver that is slow, dead or hostile costs this process sockets, time
and memory, and nothing else does; it can never slow the projector (which vendors' reads wait
for) or the API's transfers, and it scales and restarts alone.

It runs the mapper (`webhooks.mapper`: journal entries to delivery rows, a follower of the
journal with its own cursor and durable consumer `webhooks-<name>`), the senders
(`webhooks.sender`: claim, POST, record), a gauge of the oldest undelivered row and the retention
sweep; `rotate_key` re-encrypts the stored secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from prometheus_client import start_http_server

from ledger import collector, db, metrics, store
from ledger.bus import EventBus
from ledger.config import ConfigError, Settings
from ledger.tasks import cancel_all
from webhooks import events
from webhooks import store as ws
from webhooks.mapper import Mapper
from webhooks.sender import Sender

log = logging.getLogger("webhooks.worker")

WORKER_NAME = "main"
RETENTION_SWEEP_S = 60.0  # delivered and failed rows past their retention are looked for this often
RETENTION_BATCH_MAX = 1000  # rows deleted in one statement at most
RETENTION_PAUSE_S = 0.1  # between two full batches, so a big backlog is deleted without a burst
GAUGE_INTERVAL_S = 5.0


async def _oldest_undelivered_gauge(pool) -> None:
    while True:
        with contextlib.suppress(store.StoreError):
            async with pool.connection() as conn:
                oldest = await ws.oldest_undelivered(conn)
            age = 0.0 if oldest is None else (dt.datetime.now(dt.timezone.utc) - oldest).total_seconds()
            metrics.WEBHOOK_OLDEST_UNDELIVERED_SECONDS.set(max(0.0, age))
        await asyncio.sleep(GAUGE_INTERVAL_S)


async def _retention_sweep(pool, *, retention_s: float) -> None:
    """Delete delivered and failed rows once they are `retention_s` old, and every row of an
    endpoint deleted `retention_s` ago (its pending rows are never attempted), in bounded batches."""
    while True:
        for delete, what in ((ws.delete_settled, "delivered or failed webhook deliveries older than"),
                             (ws.delete_of_deleted_endpoints, "webhook deliveries of endpoints deleted more than")):
            deleted = 0
            with contextlib.suppress(store.StoreError):
                while True:
                    async with pool.connection() as conn:
                        batch = await delete(conn, older_than_s=retention_s, limit=RETENTION_BATCH_MAX)
                    deleted += batch
                    if batch < RETENTION_BATCH_MAX:
                        break
                    await asyncio.sleep(RETENTION_PAUSE_S)
            if deleted:
                log.info("deleted %d %s %g s ago", deleted, what, retention_s)
        await asyncio.sleep(RETENTION_SWEEP_S)


def keyring_from(settings: Settings) -> events.Keyring:
    if settings.webhooks.key is None:
        raise ConfigError("LEDGER_WEBHOOK_KEY is not set: webhook secrets cannot be encrypted or decrypted")
    return events.Keyring(settings.webhooks.key)


async def serve(settings: Settings, *, metrics_listener: bool = False, name: str = WORKER_NAME) -> None:
    """Run the mapper and the senders until cancelled."""
    keyring = keyring_from(settings)
    dialect = await db.wait_for_dialect(settings.database.url)
    # Every write here is derived from the journal or records an attempt: a commit lost in a crash
    # maps the entries again or sends the event again (at least once, the same webhook-id), so the
    # commits need not wait for the WAL flush.
    pool = db.make_pool(settings.database.url, role=ws.WEBHOOKS_ROLE, size_max=4, dialect=dialect, name="webhooks",
                        timeouts=db.timeouts_from(settings.database), relaxed=True)
    await pool.open(wait=True)
    bus = EventBus.from_settings(settings.nats, name="ledger-webhooks", manage_stream=False)
    bus.start()
    metrics_server = None
    if metrics_listener and settings.http.metrics_port is not None:
        metrics_server, _ = start_http_server(settings.http.metrics_port, addr=settings.http.host)
    wake = asyncio.Event()
    sender = Sender(pool=pool, keyring=keyring, wake=wake, concurrency_max=settings.webhooks.concurrency_max,
                    endpoint_max=settings.webhooks.endpoint_concurrency_max,
                    allow_private=settings.webhooks.allow_private)
    mapper = Mapper(pool=pool, bus=bus, name=name, wake=wake, sender=sender)
    tasks = [asyncio.create_task(mapper.run(), name="webhook-mapper"),
             asyncio.create_task(sender.run(), name="webhook-sender"),
             asyncio.create_task(_oldest_undelivered_gauge(pool), name="webhook-gauge"),
             asyncio.create_task(_retention_sweep(pool, retention_s=settings.webhooks.retention_s),
                                 name="webhook-retention")]
    log.info("webhook worker running")
    try:
        with collector.settled():  # as the API: the attempts' garbage, not start-up's, is collected
            await asyncio.gather(*tasks)
    finally:
        await cancel_all(tasks)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        await bus.close()
        await pool.close()


async def rotate_key(settings: Settings) -> int:
    """`ledger webhooks rotate-key`: re-encrypt every stored secret with the first key of
    LEDGER_WEBHOOK_KEY; returns how many. Afterwards the older keys can be dropped."""
    keyring = keyring_from(settings)
    pool = db.make_pool(settings.database.url, role=ws.WEBHOOKS_ROLE, size_max=1,
                        timeouts=db.timeouts_from(settings.database))
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            rows = await ws.all_secrets(conn)
            for endpoint_id, encrypted in rows:
                await ws.replace_secret(conn, endpoint_id, old=encrypted, new=keyring.rotate(encrypted))
        return len(rows)
    finally:
        await pool.close()
