"""The hold-expiry sweeper: pending holds past `expires_at` are released through the committer.

They are submitted as `expire` commands, decided like any other.

A process that runs a committer (each API process) calls `expire_due_holds` on its schedule
(`LEDGER_HOLD_SWEEP_INTERVAL_MS`). With several processes sweeping, the batch decision keeps it to
one expiry per hold: the hold is no longer pending, or the sweeper's key for it is already used
(`commands.expire`), so a second sweep replays or is refused, never an error.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from ledger import commands, metrics, store
from ledger.committer import Committer, QueueFull, Unavailable

# A sweep round that finds a full batch of due holds goes on at once, this many passes at most,
# so a burst of expiries is not paced by the sweep interval (bounded: then the next round).
HOLD_SWEEP_PASSES_MAX = 10


async def expire_due_holds(pool, committer: Committer, *, batch_max: int) -> int:
    """One round: submit an `expire` for up to `batch_max` due holds at a time (all at once, so
    they share batches), again at once while a full `batch_max` was due, up to
    HOLD_SWEEP_PASSES_MAX times; returns how many expired here."""
    expired = 0
    for _ in range(HOLD_SWEEP_PASSES_MAX):
        found, done = await _expire_pass(pool, committer, batch_max=batch_max)
        expired += done
        if found < batch_max:
            break
    return expired


async def _expire_pass(pool, committer: Committer, *, batch_max: int) -> tuple[int, int]:
    """(due holds found, expired here). A hold another process expired first is refused or
    replayed, which is not an error; a full queue or an outage leaves the rest for the next round."""
    async with pool.connection() as conn:
        due = await store.due_holds(conn, now=dt.datetime.now(dt.timezone.utc), limit=batch_max)
    if not due:
        return 0, 0
    answers = await asyncio.gather(*(committer.submit(commands.expire(hold)) for hold in due), return_exceptions=True)
    expired = 0
    for answer in answers:
        if isinstance(answer, (QueueFull, Unavailable)):
            continue
        if isinstance(answer, BaseException):
            raise answer
        if answer.entry is not None and not answer.replayed:
            expired += 1
    metrics.HOLDS_EXPIRED.inc(expired)
    return len(due), expired
