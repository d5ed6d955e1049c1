"""The bodies of `POST /v1/batches`: the request with its typed items, and the per-item answers.

Each item is the body of its single route plus `type` (which route) and `idempotency_key` (the
header's value): the item types extend the single routes' bodies, so a field means the same in
both and the shape checks are the same.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from msgspec import Meta, Struct

from schemas import (
    Amount, Hold, HoldCreate, Metadata, Problem, Reference, RefundCreate, Strict, Transfer, TransferCreate,
)

# The contract's ceiling of LEDGER_BATCH_ITEMS_MAX; the service's own cap (1000 by default) is
# checked by the handler, which answers 400 at `$.items` past it.
BATCH_ITEMS_CAP = 10_000

# As the Idempotency-Key header: 1..255 printable ASCII characters. `(?!\n)` because Python's `$`
# (msgspec's) also matches before a final newline, where JSON Schema's does not.
IdempotencyKey = Annotated[str, Meta(
    min_length=1, max_length=255, pattern="^[\\x20-\\x7e]+(?!\\n)$",
    description="As the Idempotency-Key header; shares the principal's key space with it.",
)]
BatchMode = Literal["independent", "atomic"]


class TransferItem(TransferCreate, tag_field="type", tag="transfer", kw_only=True):
    """A transfer, as `POST /v1/transfers`."""

    idempotency_key: IdempotencyKey


class RefundItem(RefundCreate, tag_field="type", tag="refund", kw_only=True):
    """A refund of `transfer_id`, as `POST /v1/transfers/{transfer_id}/refunds`."""

    transfer_id: uuid.UUID
    idempotency_key: IdempotencyKey


class HoldItem(HoldCreate, tag_field="type", tag="hold", kw_only=True):
    """A new hold, as `POST /v1/holds`."""

    idempotency_key: IdempotencyKey


class CaptureItem(Strict, tag_field="type", tag="capture", kw_only=True):
    """A capture of `hold_id`, as `POST /v1/holds/{hold_id}/capture`; no amount: the whole hold."""

    hold_id: uuid.UUID
    idempotency_key: IdempotencyKey
    amount: Amount | None = None


class VoidItem(Strict, tag_field="type", tag="void", kw_only=True):
    """A void of `hold_id`, as `POST /v1/holds/{hold_id}/void`."""

    hold_id: uuid.UUID
    idempotency_key: IdempotencyKey


BatchItem = Union[TransferItem, RefundItem, HoldItem, CaptureItem, VoidItem]


class BatchCreate(Strict):
    mode: Annotated[BatchMode, Meta(
        description="`independent`: each item decided on its own, in order; `atomic`: all commit, at "
        "consecutive positions in item order, or none does.",
    )]
    items: Annotated[list[BatchItem], Meta(
        min_length=1, max_length=BATCH_ITEMS_CAP,
        description="1..1000 items (the service's LEDGER_BATCH_ITEMS_MAX, at most 10,000); keys unique in a batch.",
    )]


# An item's answer body is what its single route answers: a Transfer (transfers, refunds), a Hold
# (holds, captures, voids) or a Problem. The OpenAPI document names them by reference (its
# components hold all three, as other routes' answers).
_ITEM_BODY_SCHEMA = {"anyOf": [{"$ref": f"#/components/schemas/{kind.__name__}"} for kind in (Transfer, Hold, Problem)]}


class BatchItemAnswer(Struct):
    index: Annotated[int, Meta(ge=0, description="The item's index in the request's `items`.")]
    status: Annotated[int, Meta(description="The status its single route would answer: 201 or a problem's.")]
    body: Annotated[Any, Meta(
        description="What its single route would answer: a Transfer, a Hold or a Problem.",
        extra_json_schema=_ITEM_BODY_SCHEMA,
    )]
    replayed: Annotated[bool, Meta(description="As the Idempotency-Replayed header would say.")]


class BatchAnswer(Struct):
    mode: BatchMode
    items: list[BatchItemAnswer]
