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

An atomic group (`submit_atomic`, a batch request in `atomic` mode) is one unit: it is taken into
one transaction whole (even past `batch_max`), never split by the isolation above, and decided
all or nothing (`_decide`): when one of its commands is rejected, the group is taken out and the
rest decided again, so what commits is exactly what the decision of the remaining commands says.
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
# How far a batch's clock may be from the database's (and the journal head's `committed_at` ahead
# of the database's) before the batch is refused: NTP keeps hosts within milliseconds, and a hold
# is released within 10 s of expiring, so a batch never decides an expiry on a clock further off.
CLOCK_SKEW_MAX_S = 5.0
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


class ClockSkewed(Unavailable):
    """This process's clock, or the journal head's time, is too far from the database's clock to
    decide a batch by (holds expire by it): the whole batch is refused, nothing written, and the
    caller answers 503 (an Unavailable, so the batch is not split as if a command were at fault)."""


def check_clock(now: dt.datetime, *, database_now: dt.datetime, head_committed_at: dt.datetime | None) -> None:
    """Raise `ClockSkewed` unless `now` is within `CLOCK_SKEW_MAX_S` of the database's clock and
    the head is not further ahead of it: a batch is stamped no earlier than the head
    (`domain.stamp_after`), so one stamped far ahead would make every later batch expire holds
    early, while the sweeper, on a correct clock, would not expire them."""
    bound = dt.timedelta(seconds=CLOCK_SKEW_MAX_S)
    if abs(now - database_now) > bound:
        raise ClockSkewed(f"this process's clock is {(now - database_now).total_seconds():+.1f} s off the"
                          f" database's (at most {CLOCK_SKEW_MAX_S:g} s): fix its time synchronisation")
    if head_committed_at is not None and head_committed_at - database_now > bound:
        raise ClockSkewed(f"the journal head was committed {(head_committed_at - database_now).total_seconds():.1f} s"
                          " ahead of the database's clock: batches wait until the clocks agree")


class Failed(Exception):
    """This command fails its batch whenever it is in one (see the module's note): nothing of it
    was written, and a retry fails the same way. The API answers 500 with a request id."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a transfer request gets back: an entry (new or replayed) or a rejection."""

    entry: schemas.JournalEntry | None
    replayed: bool = False
    rejection: domain.Rejection | None = None
    aborted: bool = False  # another command of its atomic group was rejected: nothing was written


ABORTED = Answer(None, aborted=True)


@dataclass(slots=True)
class _Waiter:
    """One unit of the queue: a single command, or an atomic group (answered with a list)."""

    commands: list[domain.EntryCommand]
    future: asyncio.Future
    request_id: str | None = None  # of the HTTP request that submitted it, for the event header
    atomic: bool = False


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
        return await self._enqueue([command], atomic=False)

    async def submit_atomic(self, commands: list[domain.EntryCommand]) -> list[Answer]:
        """All of `commands` commit, at consecutive positions in their order, or none does: the
        first rejected one keeps its rejection and the others are `ABORTED`."""
        return await self._enqueue(list(commands), atomic=True)

    async def _enqueue(self, commands: list[domain.EntryCommand], *, atomic: bool):
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Waiter(commands, future, logs.REQUEST_ID.get(), atomic))
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
            # Commands, not units, count: an atomic group taken last may carry a batch past it.
            size = len(batch[0].commands)
            while size < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
                size += len(batch[-1].commands)
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
                kinds = ",".join(sorted({command.kind for command in batch[0].commands}))
                log.error("a %s failed its batch; the others are answered", kinds, exc_info=error)
                if not batch[0].future.done():
                    batch[0].future.set_exception(Failed("the command failed; see the log"))
                return
            middle = len(batch) // 2
            await self._commit_isolating(batch[:middle])
            await self._commit_isolating(batch[middle:])

    async def _commit(self, batch: list[_Waiter]) -> None:
        commands = [command for waiter in batch for command in waiter.commands]
        groups, start = [], 0
        for waiter in batch:
            if waiter.atomic:
                groups.append(range(start, start + len(waiter.commands)))
            start += len(waiter.commands)
        for attempt in range(self._retries_max + 1):
            try:
                started = time.perf_counter()
                answers, entries = await self._attempt(commands, groups)
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
        metrics.BATCH_SIZE.observe(len(commands))
        start = 0
        for waiter in batch:
            mine = answers[start:start + len(waiter.commands)]
            start += len(waiter.commands)
            if not waiter.future.done():
                waiter.future.set_result(mine if waiter.atomic else mine[0])
        if entries and self._publish is not None:
            task = asyncio.create_task(self._publish(entries, self._request_ids(batch, answers)))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    @staticmethod
    def _request_ids(batch: list[_Waiter], answers: list[Answer]) -> dict[int, str]:
        """Which request wrote each new entry (a replay in the same batch wrote nothing)."""
        request_ids = [waiter.request_id for waiter in batch for _ in waiter.commands]
        return {
            answer.entry.position: request_id
            for request_id, answer in zip(request_ids, answers, strict=True)
            if answer.entry is not None and not answer.replayed and request_id
        }

    async def _attempt(
        self, commands: list[domain.EntryCommand], groups: list[range]
    ) -> tuple[list[Answer], list[schemas.JournalEntry]]:
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
            now = self._clock()  # after the head lock, next to the database's clock read with it
            check_clock(now, database_now=state.database_now, head_committed_at=state.head_committed_at)
            now = domain.stamp_after(now, state.head_committed_at)
            result, aborted = _decide(commands, groups, state, now)
            if result.entries:
                await store.write_batch(conn, result, committed_at=now)
            # A batch that only replays still commits a WAL record (the head row lock that
            # `store.read_batch_state` takes is WAL-logged), so on PostgreSQL its COMMIT waits for
            # the synchronous standby like a write's: a replay is answered 201 only once the
            # standby holds the entry (`ledger.standby`; tests/ops/test_failover_replay.py).
            replays = await self._replayed_entries(conn, result)
        decided = iter(result.outcomes)
        answers = [aborted[i] if i in aborted else self._answer(next(decided), replays) for i in range(len(commands))]
        return answers, result.entries

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


def _decide(
    commands: list[domain.EntryCommand], groups: list[range], state: domain.BatchState, now: dt.datetime
) -> tuple[domain.BatchResult, dict[int, Answer]]:
    """`domain.decide_batch` over the commands, with every atomic group all or nothing: while a
    group has a rejected command, the first such group is taken out (its first rejection kept,
    the rest `ABORTED`) and the remaining commands are decided again. A decision sees only the
    ones before it, so taking out the first failing group leaves everything before it as decided
    and its rejection exact; at most one more (pure, in-memory) decision per failing group.
    Returns the decision of the commands that remain, and the answers of the ones taken out."""
    aborted: dict[int, Answer] = {}
    committed_at = domain.format_timestamp(now)
    while True:
        kept = [i for i in range(len(commands)) if i not in aborted]
        result = domain.decide_batch([commands[i] for i in kept], state, committed_at=committed_at, now=now)
        if not groups:
            return result, aborted
        outcome_of = dict(zip(kept, result.outcomes, strict=True))
        failing = next((g for g in groups if any(isinstance(outcome_of.get(i), domain.Rejected) for i in g)), None)
        if failing is None:
            return result, aborted
        first = next(i for i in failing if isinstance(outcome_of[i], domain.Rejected))
        for i in failing:
            aborted[i] = Answer(None, rejection=outcome_of[i].reason) if i == first else ABORTED
        groups = [g for g in groups if g is not failing]
