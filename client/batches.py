"""The client's batch calls: `batch`, retried with the same keys, and `batches` for a long iterable.

Items are `schemas.batches` Structs (`TransferItem`, `RefundItem`, `HoldItem`, `CaptureItem`,
`VoidItem`), each with its own `idempotency_key`. Every retry sends the same keys, so an item is
applied at most once however often its batch is sent: the whole request is retried as any other
call (`client.transport`), and items answered 503 (`queue_full`, `unavailable`, `timeout`: not
decided, or not known to be) are sent again, alone, with their keys, within the same bounds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence

import msgspec

import schemas
from client.transport import RETRYABLE_CODES, _backoff_s
from schemas.batches import (
    BatchAnswer, BatchCreate, BatchItem, BatchItemAnswer, BatchMode, CaptureItem, HoldItem, VoidItem,
)

BATCH_ITEMS_DEFAULT = 1000  # the service's default cap on items a batch (LEDGER_BATCH_ITEMS_MAX)
_HOLD_ITEMS = (HoldItem, CaptureItem, VoidItem)


def chunks(items: Iterable[BatchItem], size: int = BATCH_ITEMS_DEFAULT) -> Iterator[list[BatchItem]]:
    """`items` in lists of `size` (the last one shorter), read lazily: a long file stays unread."""
    if size < 1:
        raise ValueError(f"a batch has at least 1 item, not {size}")
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class BatchRoutes:
    """`POST /v1/batches`; mixed into `LedgerClient` (which gives `_call` and the retry bounds)."""

    async def batch(self, items: Sequence[BatchItem], *, mode: BatchMode = "independent") -> BatchAnswer:
        """One batch: each item's answer (`status`, `body`: a `Transfer`, a `Hold` or a `Problem`,
        `replayed`), in item order. A bad shape anywhere raises `LedgerProblem` (400) for all."""
        items = list(items)
        answers: list[BatchItemAnswer | None] = [None] * len(items)
        pending = list(range(len(items)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_total_s
        for round_number in itertools.count(1):
            body = BatchCreate(mode=mode, items=[items[i] for i in pending])
            reply = await self._call("POST", "/v1/batches", BatchAnswer, body=body)
            for answer in reply.items:
                index = pending[answer.index]
                answers[index] = _typed(items[index], answer, index)
            pending = [i for i in pending if _undecided(answers[i])]
            delay_s = _backoff_s(round_number)
            if not pending or round_number >= self._retry_attempts_max or loop.time() + delay_s >= deadline:
                break
            await asyncio.sleep(delay_s)
        return BatchAnswer(mode=mode, items=answers)

    async def batches(
        self, items: Iterable[BatchItem], *, mode: BatchMode = "independent", size: int = BATCH_ITEMS_DEFAULT
    ) -> AsyncIterator[BatchAnswer]:
        """`items` sent `size` at a time, one batch after another; yields each batch's answer with
        `index` counted over the whole iterable. `atomic` holds within each batch, not across."""
        start = 0
        for chunk in chunks(items, size):
            answer = await self.batch(chunk, mode=mode)
            for item in answer.items:
                item.index += start
            start += len(chunk)
            yield answer


def _typed(item: BatchItem, answer: BatchItemAnswer, index: int) -> BatchItemAnswer:
    """The answer with its body decoded into what the item's single route answers."""
    if answer.status == 201:
        kind = schemas.Hold if isinstance(item, _HOLD_ITEMS) else schemas.Transfer
    else:
        kind = schemas.Problem
    return BatchItemAnswer(index=index, status=answer.status, body=msgspec.convert(answer.body, kind),
                           replayed=answer.replayed)


def _undecided(answer: BatchItemAnswer) -> bool:
    return isinstance(answer.body, schemas.Problem) and answer.body.code in RETRYABLE_CODES
