"""`POST /v1/batches`: many commands in one request, each answered as its single route would be.

Every item goes through what its single route runs: the route's roles, its ownership (the same
`Route.ownership` lookup, through `framework.authorize_owner`), the same command builder
(`ledger.commands`, via `api.payments`) and the same group commit; only the shape of the whole
request (400, nothing written) is checked once for all items. Items keep their order: in
`independent` mode each is submitted on its own, in item order, so the committer may decide them
in several transactions; in `atomic` mode they are submitted as one atomic group, which the
committer decides in one transaction, all or nothing.

Rate limits count items: the request's own token is taken at the door, the other items' once the
body is read. A batch larger than the burst is let through when the bucket is full and leaves it
in debt (`api.ratelimit`), so the principal's items per second stay at the rate.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Mapping

from aiohttp import web

import schemas
from api import auth, payments
from api.framework import Call, Route, authorize_owner, json_response
from api.problems import ApiError, problem_body
from ledger import commands, committer as committer_mod, domain, store
from schemas.batches import (
    BatchAnswer, BatchCreate, BatchItem, BatchItemAnswer, CaptureItem, HoldItem, RefundItem, TransferItem, VoidItem,
)

# The single route of each item type, by its handler's name (`api.routes` hands over the routes).
ITEM_ROUTE_NAMES = {
    TransferItem: "create_transfer", RefundItem: "create_refund", HoldItem: "create_hold",
    CaptureItem: "capture_hold", VoidItem: "void_hold",
}
HOLD_ITEMS = (HoldItem, CaptureItem, VoidItem)  # answered with the hold, as their routes are
ABORTED = ApiError("batch_aborted")

Prepared = domain.EntryCommand | ApiError  # an item's command, or the problem its checks answered


def batch_handler(item_routes: Mapping[type, Route]) -> Callable[[object, Call], Awaitable[web.Response]]:
    """The handler of `POST /v1/batches`, checking each item against its single route."""

    async def create_batch(services, call: Call) -> web.Response:
        body: BatchCreate = call.body
        check_items(body.items, services.settings.api.batch_items_max)
        await services.rate_limit(call.principal, cost=len(body.items) - 1)
        prepared = [await _prepare(services, call.principal, item, item_routes[type(item)]) for item in body.items]
        if body.mode == "atomic":
            outcomes = await _atomic(services, prepared)
        else:
            outcomes = await asyncio.gather(*(_independent(services, command) for command in prepared))
        answers = await _answers(services, body.items, outcomes)
        return json_response(BatchAnswer(mode=body.mode, items=answers))

    return create_batch


def document_items_cap(document: dict, items_max: int) -> dict:
    """The OpenAPI document with the running service's cap on items (LEDGER_BATCH_ITEMS_MAX)
    rather than the contract's ceiling, which the request type allows so that the cap can be set."""
    items = document["components"]["schemas"][BatchCreate.__name__]["properties"]["items"]
    items["maxItems"] = items_max
    items["description"] = f"1..{items_max} items (LEDGER_BATCH_ITEMS_MAX); keys unique in a batch."
    return document


def check_items(items: list[BatchItem], items_max: int) -> None:
    """What the item types cannot say: the service's cap on items, and keys unique in the batch."""
    if len(items) > items_max:
        _invalid("$.items", f"at most {items_max} items in a batch, got {len(items)}")
    first_of: dict[str, int] = {}
    for index, item in enumerate(items):
        first = first_of.setdefault(item.idempotency_key, index)
        if first != index:
            _invalid(f"$.items[{index}].idempotency_key", f"the key of item {first} again; keys are unique in a batch")


def _invalid(path: str, message: str) -> None:
    raise ApiError("validation_error", f"{message} at {path}", errors=[schemas.ValidationIssue(path=path, message=message)])


async def _prepare(services, principal: auth.Principal, item: BatchItem, route: Route) -> Prepared:
    """The item's command, after the checks its single route runs before submitting (role,
    ownership, what its handler refuses), or the problem the first failing one answers."""
    try:
        auth.require_role(principal, route.roles, route.name)
        resource = None
        if route.ownership is not None:
            value = getattr(item, route.ownership.key)
            resource = await authorize_owner(route.ownership, services, principal, value)
        caller = commands.Caller(principal.id, principal.role, item.idempotency_key)
        if isinstance(item, TransferItem):
            return commands.transfer(caller, item)
        if isinstance(item, RefundItem):
            return payments.refund_command(caller, resource, item)
        if isinstance(item, HoldItem):
            return await payments.hold_command(services, caller, item)
        if isinstance(item, CaptureItem):
            return commands.capture(caller, resource, item)
        return commands.void(caller, resource)
    except ApiError as error:
        return error


async def _independent(services, prepared: Prepared) -> committer_mod.Answer | ApiError:
    """One item on its own, as its single route submits it. The tasks of a batch start in item
    order and each enqueues before its first wait, so the committer sees the items in order."""
    if isinstance(prepared, ApiError):
        return prepared
    try:
        return await payments.submit(services, prepared)
    except ApiError as error:
        return error
    except committer_mod.Failed:
        return ApiError("internal_error", "the item failed; see the service's log")


async def _atomic(services, prepared: list[Prepared]) -> list[committer_mod.Answer | ApiError]:
    """All items as one atomic group. An item refused before the decision (role, ownership, ...)
    is the first to fail (those checks come before the business rules), and nothing is submitted."""
    refused = next((index for index, item in enumerate(prepared) if isinstance(item, ApiError)), None)
    if refused is not None:
        return [prepared[refused] if index == refused else ABORTED for index in range(len(prepared))]
    try:
        answers = await services.committer.submit_atomic(prepared)
    except committer_mod.QueueFull:
        return [ApiError("queue_full")] * len(prepared)
    except committer_mod.Unavailable as error:
        detail = f"the batch may or may not be committed; retry it with the same keys: {error}"
        return [ApiError("unavailable", detail)] * len(prepared)
    except committer_mod.Failed:
        return [ApiError("internal_error", "the batch failed; see the service's log")] * len(prepared)
    return [_refusal(answer) or answer for answer in answers]


def _refusal(answer: committer_mod.Answer) -> ApiError | None:
    if answer.aborted:
        return ABORTED
    if answer.rejection is not None:
        return ApiError(answer.rejection.value)
    return None


async def _answers(
    services, items: list[BatchItem], outcomes: list[committer_mod.Answer | ApiError]
) -> list[BatchItemAnswer]:
    """Each item's answer as its single route gives it: 201 with a transfer or a hold (holds read
    once committed, as their routes read them), or the problem."""
    answers = []
    async with services.pool.connection() as conn:
        for index, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
            if isinstance(outcome, ApiError):
                answers.append(BatchItemAnswer(index, outcome.status, problem_body(outcome), False))
                continue
            if isinstance(item, HOLD_ITEMS):
                hold = await store.hold_by_id(conn, outcome.entry.hold_id)
                body = payments.hold_body(hold, as_placed=isinstance(item, HoldItem))
            else:
                body = payments.transfer_body(outcome.entry)
            answers.append(BatchItemAnswer(index, 201, body, outcome.replayed))
    return answers
