"""Group commit: many concurrent transfer requests, one SERIALIZABLE transaction per batch.

Requests wait in a bounded queue. One committer task takes what is there (up to `batch_max`,
lingering about a millisecond for more), reads the state the batch needs, decides every transfer
with the pure `domain.decide_batch`, writes the result in a few multi-row statements, commits,
answers every waiter, and only then hands the entries to the publisher. A serialization failure
retries the whole batch with bounded, jittered backoff; the decision is simply made again.

A batch that fails for a reason of its own (an invariant the decision asserts, a constraint the
database refuses: a bug or a damaged state, never an outage) is split in halves, each committed
apart, down to the command that fails: that one alone gets `Failed`, the others their answers.
No waiter ever gets the database's text (hosts, ports, other accounts' ids): it goes to the log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from psycopg_pool import AsyncConnectionPool

import schemas
from ledger import dialect, domain, logs, metrics, store

log = logging.getLogger("ledger.committer")

RETRY_DELAY_MS_MIN = 2.0
RETRY_DELAY_MS_MAX = 200.0
# What waiters hear of an outage: the driver's own text names hosts, ports and other users'
# accounts, so it goes to the log only.
DATABASE_UNAVAILABLE = "the database is unavailable"
BATCH_FAILED = "the batch failed"


class QueueFull(Exception):
    """The commit queue is at `queue_max`: the caller answers 503 with Retry-After."""


class Unavailable(Exception):
    """The database failed or kept conflicting past `commit_retries_max`. After a conflict nothing
    was written; after a lost connection the batch may have committed (the COMMIT was sent, its
    answer never came), so the outcome is unknown until the same key is retried."""


class Failed(Exception):
    """This command fails its batch whenever it is in one (see the module's note): nothing of it
    was written, and a retry fails the same way. The API answers 500 with a request id."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a transfer request gets back: an entry (new or replayed) or a rejection."""

    entry: schemas.JournalEntry | None
    replayed: bool = False
    rejection: domain.Rejection | None = None


@dataclass(slots=True)
class _Waiter:
    command: domain.EntryCommand
    future: asyncio.Future
    request_id: str | None = None  # of the HTTP request that submitted it, for the event header


# Called with a batch's new entries and, per position, the id of the request that produced it.
Publisher = Callable[[list[schemas.JournalEntry], dict[int, str]], Awaitable[None]]


class Committer:
    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        batch_max: int,
        queue_max: int,
        batch_linger_ms: float,
        commit_retries_max: int,
        publish: Publisher | None = None,
        sql_dialect: dialect.Dialect = dialect.POSTGRESQL,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    ) -> None:
        self._pool = pool
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Waiter] = asyncio.Queue(maxsize=queue_max)
        self._linger_s = batch_linger_ms / 1000
        self._retries_max = commit_retries_max
        self._publish = publish
        self._batch_lock = sql_dialect.batch_lock()
        self._clock = clock
        self._task: asyncio.Task | None = None
        self._publishing: set[asyncio.Task] = set()

    def start(self) -> None:
        # Read when /metrics is scraped, rather than set on every submit and batch.
        metrics.QUEUE_DEPTH.set_function(self._queue.qsize)
        self._task = asyncio.create_task(self._run(), name="committer")

    async def stop(self) -> None:
        """Finish what is queued, then stop; publishes in flight are awaited (what they miss
        stays behind the publisher cursor for the sweeper)."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)

    async def submit(self, command: domain.EntryCommand) -> Answer:
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Waiter(command, future, logs.REQUEST_ID.get()))
        except asyncio.QueueFull:
            raise QueueFull from None
        # Not shielded: a caller that gives up (its request timed out) cancels its own future, and
        # the batch, which answers only futures not done, still commits the transfer.
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._linger_s > 0 and self._queue.qsize() < self._batch_max - 1:
                await asyncio.sleep(self._linger_s)
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit_isolating(batch)
            except Exception as error:  # answer every waiter, whatever broke
                log.warning("batch of %d failed", len(batch), exc_info=error)
                unavailable = error if isinstance(error, Unavailable) else Unavailable(BATCH_FAILED)
                for waiter in batch:
                    if not waiter.future.done():
                        waiter.future.set_exception(unavailable)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit_isolating(self, batch: list[_Waiter]) -> None:
        """Commit the batch, or, when it fails for a reason of its own, each half apart: a few
        transactions more (about 2 log2(n) per failing command) instead of n failed requests."""
        try:
            await self._commit(batch)
        except Unavailable:
            raise  # an outage or a lasting conflict: every command of the batch shares it
        except Exception as error:
            if len(batch) == 1:
                log.error("a %s failed its batch; the others are answered", batch[0].command.kind, exc_info=error)
                if not batch[0].future.done():
                    batch[0].future.set_exception(Failed("the command failed; see the log"))
                return
            middle = len(batch) // 2
            await self._commit_isolating(batch[:middle])
            await self._commit_isolating(batch[middle:])

    async def _commit(self, batch: list[_Waiter]) -> None:
        commands = [waiter.command for waiter in batch]
        for attempt in range(self._retries_max + 1):
            try:
                started = time.perf_counter()
                answers, entries = await self._attempt(commands)
                metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
                break
            except store.Conflict as error:
                if attempt == self._retries_max:
                    log.warning("batch still conflicting after %d retries: %s", attempt, error)
                    raise Unavailable(f"still conflicting after {attempt} retries") from error
                metrics.SERIALIZATION_RETRIES.inc()
                delay_ms = min(RETRY_DELAY_MS_MAX, RETRY_DELAY_MS_MIN * 2**attempt)
                await asyncio.sleep(random.uniform(0, delay_ms) / 1000)
            except store.StoreUnavailable as error:
                log.warning("database unavailable to the committer: %s", error)
                raise Unavailable(DATABASE_UNAVAILABLE) from error
        metrics.BATCH_SIZE.observe(len(batch))
        for waiter, answer in zip(batch, answers):
            if not waiter.future.done():
                waiter.future.set_result(answer)
        if entries and self._publish is not None:
            task = asyncio.create_task(self._publish(entries, self._request_ids(batch, answers)))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    @staticmethod
    def _request_ids(batch: list[_Waiter], answers: list[Answer]) -> dict[int, str]:
        """Which request wrote each new entry (a replay in the same batch wrote nothing)."""
        return {
            answer.entry.position: waiter.request_id
            for waiter, answer in zip(batch, answers, strict=True)
            if answer.entry is not None and not answer.replayed and waiter.request_id
        }

    async def _attempt(self, commands: list[domain.EntryCommand]) -> tuple[list[Answer], list[schemas.JournalEntry]]:
        now = self._clock()
        async with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
            state = await store.read_batch_state(
                conn,
                batch_lock=self._batch_lock,
                account_ids=list(
                    {c.from_account_id for c in commands} | {c.to_account_id for c in commands}
                    | {domain.holding_account_id(c.currency) for c in commands if c.hold_id is not None}
                ),
                principal_ids=[c.principal_id for c in commands],
                keys=[c.idempotency_key for c in commands],
                refunded_ids=list({c.refund_of for c in commands if c.refund_of is not None}),
                hold_ids=list({c.hold_id for c in commands if c.kind in domain.HOLD_CLOSING_KINDS}),
            )
            now = domain.stamp_after(now, state.head_committed_at)
            result = domain.decide_batch(commands, state, committed_at=domain.format_timestamp(now), now=now)
            if result.entries:
                await store.write_batch(conn, result, committed_at=now)
            replays = await self._replayed_entries(conn, result)
        return [self._answer(outcome, replays) for outcome in result.outcomes], result.entries

    @staticmethod
    async def _replayed_entries(conn, result: domain.BatchResult) -> dict[int, schemas.JournalEntry]:
        known = {entry.position: entry for entry in result.entries}
        missing = [o.position for o in result.outcomes if isinstance(o, domain.Replayed) and o.position not in known]
        if missing:
            known.update({entry.position: entry for entry in await store.entries_by_positions(conn, missing)})
        return known

    @staticmethod
    def _answer(outcome: domain.Outcome, entries: dict[int, schemas.JournalEntry]) -> Answer:
        if isinstance(outcome, domain.Committed):
            return Answer(outcome.entry)
        if isinstance(outcome, domain.Replayed):
            return Answer(entries[outcome.position], replayed=True)
        return Answer(None, rejection=outcome.reason)
