"""What a failover cannot take back: the journal position the synchronous standby is known to hold.

With a synchronous standby (PostgreSQL, `synchronous_standby_names`), a COMMIT returns only once
the standby has flushed it, unless its wait is cancelled: then the entry is visible on the primary
alone and a failover loses it, its position reused by another entry. Nothing that leaves the
service may show such an entry (DESIGN "Nothing leaves the service for an entry a failover could
lose"): not a projection, not a webhook, not a signed tree head. So a journal follower reads no
further than the position a `StandbyGate` confirmed.

Confirming: one transaction reads the journal head H, writes a WAL record (`Dialect.standby_probe`)
and commits with `synchronous_commit = on`, so its COMMIT returns once the standby has flushed its
commit record, which comes after that of every entry up to H (they were visible when H was read, and
an entry is visible only once its commit record is flushed). A COMMIT whose wait ends by a cancel
(an operator's, or this module's after `STANDBY_WAIT_S`) confirms nothing, and the step is not
taken. CockroachDB needs no gate: what it acknowledges is on a quorum.

A replay needs no gate: its batch locks the journal head row (`SELECT ... FOR UPDATE`, which writes
a WAL record), so its COMMIT waits for the standby exactly like a write's (`ledger.committer`).
"""

from __future__ import annotations

import asyncio

import psycopg
from psycopg import pq

from ledger import db, dialect, metrics, store

# How long a follower's step waits for the standby to confirm the journal head before it gives up
# (an outage: the follower's loop logs it and tries again). The standby answers in about a
# round trip when it streams; only a standby that is away or far behind takes longer.
STANDBY_WAIT_S = 5.0

_UNKNOWN = object()


class StandbyGate:
    """One follower's confirmed position: the journal head the standby is known to hold, as of the
    last confirmation. Positions at or below it survive a failover to the synchronous standby, so
    it stays valid after one."""

    def __init__(self, follower: str, *, wait_s: float = STANDBY_WAIT_S) -> None:
        self.follower = follower
        self.position = 0
        self.wait_s = wait_s
        self._probe: object = _UNKNOWN  # the dialect's statement, or None: no gate (CockroachDB)

    async def confirm(self, conn: psycopg.AsyncConnection) -> int | None:
        """The highest journal position a follower may read, confirmed on `conn` outside any
        transaction; None when the database needs no gate. Raises `store.StoreUnavailable` when
        the standby does not confirm within the wait."""
        if self._probe is _UNKNOWN:
            self._probe = dialect.from_version(await store.server_version(conn)).standby_probe()
        if self._probe is None:
            return None
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            raise RuntimeError("the standby confirms a COMMIT: call outside a transaction")
        head = await self._probe_commit(conn)
        self.position = max(self.position, head)
        return self.position

    async def _probe_commit(self, conn: psycopg.AsyncConnection) -> int:
        """Read the head and commit the probe; the head, once the standby confirmed the COMMIT."""
        cancelled: list[str] = []

        def on_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
            if db.SYNC_REPLICATION_CANCELLED in (diagnostic.message_primary or ""):
                cancelled.append(diagnostic.message_primary)

        conn.add_notice_handler(on_notice)
        try:
            async with asyncio.timeout(self.wait_s):
                async with conn.transaction():
                    head = (await store.journal_head(conn)).position
                    if head > self.position:  # else nothing new to confirm: no write, no wait
                        await conn.execute(self._probe)
        except TimeoutError:
            # The cancelled wait (psycopg sends the cancel) leaves the probe committed locally only.
            cancelled.append(f"no confirmation within {self.wait_s:g}s")
        finally:
            conn.remove_notice_handler(on_notice)
        if cancelled:
            metrics.FOLLOWER_STANDBY_UNCONFIRMED.labels(self.follower).inc()
            raise store.StoreUnavailable(f"the synchronous standby did not confirm the journal head: {cancelled[0]}")
        return head
