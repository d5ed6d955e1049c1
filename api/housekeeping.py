"""What an API process does besides answering requests, each on its own bounded schedule.

- `Readiness`: probes the database once a second, so `/readyz` answers from the last probe
  without taking a pool connection per request (a flood of probes costs nothing); and every
  `HISTORY_CHECK_INTERVAL_S` whether the journal still extends the last signed tree head.
- `Watermark`: the projector's announced position, used only as a wake-up for read-your-writes
  waits. It is never believed: a waiter re-reads the checkpoint from the database, and waits its
  poll interval unless a new announcement arrives, so a forged or stale watermark costs nothing.
- `forget_idempotency_keys`: keys older than `idempotency_retention_s` are deleted in bounded
  batches; a retry after that is evaluated as a new request.
- `flush_token_usage`: `last_used_at` of the tokens used, written once a minute, not per request.

`every` runs each on its schedule, and the hold-expiry sweeper of the ledger
(`ledger.sweeper.expire_due_holds`) beside them, through this process's committer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from ledger import logs, metrics, store
from proofs import fork
from proofs import store as tree_store

log = logging.getLogger("ledger.api")

READINESS_PROBE_INTERVAL_S = 1.0
READINESS_PROBE_TIMEOUT_S = 2.0
# A probe older than this is stale (the probe task itself is stuck): not ready.
READINESS_STALE_S = 5.0
# The signed history's check (a few small statements) runs less often than the database probe.
HISTORY_CHECK_INTERVAL_S = 5.0
IDEMPOTENCY_SWEEP_INTERVAL_S = 60.0
IDEMPOTENCY_SWEEP_BATCH_MAX = 1_000
IDEMPOTENCY_SWEEP_BATCHES_MAX = 100  # per round: at most 100,000 keys, then the next round
TOKEN_USAGE_FLUSH_INTERVAL_S = 60.0


class Watermark:
    """The last position the projector announced; waiters wake when an announcement arrives."""

    def __init__(self) -> None:
        self.position = 0
        self._news = asyncio.Event()

    def announce(self, position: int) -> None:
        # Any change wakes the waiters, a lower one too (a rebuild starts again from 0); the
        # waiters check the database either way, so the value itself is never trusted.
        if position != self.position:
            self.position = position
            self._news.set()
            self._news = asyncio.Event()

    async def next_announcement(self, *, timeout_s: float) -> None:
        """Return at the next announcement, or after `timeout_s`, whichever comes first."""
        try:
            await asyncio.wait_for(self._news.wait(), timeout_s)
        except TimeoutError:
            pass


class Readiness:
    def __init__(self, pool) -> None:
        self._pool = pool
        self.database_ok = False
        self._probed_at = float("-inf")
        self.tree_heads = "unknown"  # "ok", or "forked": the journal does not extend the last signed head
        self._history_due = float("-inf")

    @property
    def database(self) -> str:
        fresh = time.monotonic() - self._probed_at <= READINESS_STALE_S
        return "ok" if self.database_ok and fresh else "down"

    async def probe_once(self) -> None:
        try:
            async with asyncio.timeout(READINESS_PROBE_TIMEOUT_S):
                async with self._pool.connection(timeout=READINESS_PROBE_TIMEOUT_S) as conn:
                    await store.ping(conn)
            self.database_ok = True
        except Exception:  # any failure means "not ready"; the reason is the database's log's
            self.database_ok = False
        metrics.READINESS_PROBES.labels("ok" if self.database_ok else "down").inc()
        self._probed_at = time.monotonic()

    async def check_history(self) -> None:
        """Whether the journal still extends the last signed tree head (`proofs.fork`): the tree
        at that head's size, O(log n) subtrees in two statements. A check that cannot tell (the
        database is down, the tree is rebuilding) keeps the last verdict."""
        try:
            async with asyncio.timeout(READINESS_PROBE_TIMEOUT_S):
                async with self._pool.connection(timeout=READINESS_PROBE_TIMEOUT_S) as conn:
                    async with conn.transaction():
                        await tree_store.repeatable_read(conn)
                        await fork.check_extension(conn, 0)
            self.tree_heads = "ok"
        except fork.ForkedHistory:
            self.tree_heads = "forked"
        except Exception:  # unknown this time: the database probe says why, the next check tells
            pass

    async def probe_forever(self) -> None:
        while True:
            await self.probe_once()
            if time.monotonic() >= self._history_due:
                self._history_due = time.monotonic() + HISTORY_CHECK_INTERVAL_S
                await self.check_history()
            await asyncio.sleep(READINESS_PROBE_INTERVAL_S)


async def forget_idempotency_keys(pool, *, retention_s: int) -> int:
    """One round: delete keys stored before now - retention, in bounded batches."""
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=retention_s)
    deleted = 0
    for _ in range(IDEMPOTENCY_SWEEP_BATCHES_MAX):
        async with pool.connection() as conn:
            count = await store.delete_idempotency_before(conn, before=before, limit=IDEMPOTENCY_SWEEP_BATCH_MAX)
        deleted += count
        if count < IDEMPOTENCY_SWEEP_BATCH_MAX:
            break
    return deleted


async def every(interval_s: float, action, name: str) -> None:
    """Run `action()` every `interval_s` until cancelled; a failed round is logged and retried."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await action()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logs.round_failed(log, "%s failed (next round in %.0f s)", error, name, interval_s)
