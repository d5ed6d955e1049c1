"""The HTTP routes of the contract. Each handler reads straight down: decode, authorize, act.

`Route` declares what the wrapper checks before the handler runs, in the contract's order:
authentication (401), request shape (400/413: headers, query, body), role (403). Ownership and
business rules come after, in the handler and the committer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Awaitable, Callable

import msgspec
from aiohttp import web

import schemas
from api import auth
from api.auth import Principal
from api.problems import ApiError, from_validation, problem_response
from ledger import committer as committer_mod
from ledger import config, domain, principals, store
from projector import store as projections

IDEMPOTENCY_KEY = "Idempotency-Key"
PROJECTION_POSITION = "Ledger-Projection-Position"
JSON = "application/json"
NDJSON = "application/x-ndjson"
WAIT_POLL_S_MAX = 0.05


class JournalQuery(msgspec.Struct, forbid_unknown_fields=True):
    after: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=schemas.JOURNAL_LIMIT_MAX)] = 1000


class PageQuery(msgspec.Struct, forbid_unknown_fields=True):
    after: str = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=schemas.PAGE_LIMIT_MAX)] = 100


class WaitQuery(msgspec.Struct, forbid_unknown_fields=True):
    min_position: Annotated[int, msgspec.Meta(ge=0)] = 0
    wait_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0


class EmptyQuery(msgspec.Struct, forbid_unknown_fields=True):
    pass


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    name: str  # key of auth.ROLES; None for public routes
    handler: Callable[..., Awaitable[web.StreamResponse]]
    body: type | None = None
    query: type = EmptyQuery
    path_ids: tuple[str, ...] = ()
    idempotency: bool = False
    public: bool = False
    summary: str = ""
    answer: Any = None
    status: int = 200


@dataclass
class Call:
    """What a handler receives once the wrapper's checks passed."""

    request: web.Request
    principal: Principal | None
    body: Any
    query: Any
    ids: dict[str, uuid.UUID]
    idempotency_key: str | None


def wrap(route: Route, services) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    body_decoder = msgspec.json.Decoder(route.body) if route.body is not None else None

    async def handler(request: web.Request) -> web.StreamResponse:
        principal = None
        if not route.public:
            principal = await services.auth.authenticate(request.headers.get("Authorization"))
            await services.rate_limit(principal)
        ids = _path_ids(request, route.path_ids)
        key = _idempotency_key(request) if route.idempotency else None
        # Probes (public routes) answer whatever query string a load balancer adds.
        query = _query(request, route.query) if not route.public else None
        body = None
        if body_decoder is not None:
            raw = await _read_body(request, services.settings.body_bytes_max)
            body = _decode(body_decoder, raw)
        if principal is not None:
            auth.require_role(principal, route.name)
        return await route.handler(services, Call(request, principal, body, query, ids, key))

    return handler


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("body_too_large")
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ApiError("body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(decoder: msgspec.json.Decoder, raw: bytes):
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        raise from_validation(str(error)) from None
    except msgspec.DecodeError as error:
        raise ApiError("invalid_json", f"body is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        # msgspec raises this (not DecodeError) for invalid UTF-8 inside a JSON string.
        raise ApiError("invalid_json", f"body is not valid UTF-8: {error.reason} at byte {error.start}") from None


def _query(request: web.Request, kind: type):
    params = dict(request.query)
    if len(params) != len(request.query):
        raise ApiError("validation_error", "a query parameter is repeated")
    try:
        return msgspec.convert(params, kind, strict=False)
    except msgspec.ValidationError as error:
        raise from_validation(str(error), root="$.query") from None


def _path_ids(request: web.Request, names: tuple[str, ...]) -> dict[str, uuid.UUID]:
    ids = {}
    for name in names:
        try:
            ids[name] = uuid.UUID(request.match_info[name])
        except ValueError:
            raise ApiError(
                "validation_error",
                f"{name} is not a UUID",
                errors=[schemas.ValidationIssue(path=f"$.path.{name}", message="Invalid UUID")],
            ) from None
    return ids


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        raise ApiError("idempotency_key_required")
    if not 1 <= len(key) <= config.IDEMPOTENCY_KEY_CHARS_MAX or not all(" " <= c <= "~" for c in key):
        raise ApiError("invalid_idempotency_key")
    return key


def json_response(value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=schemas.encode(value), status=status, content_type=JSON, headers=headers)


# ---- principals and accounts ----------------------------------------------------------------


async def create_principal(services, call: Call) -> web.Response:
    body: schemas.PrincipalCreate = call.body
    async with services.pool.connection() as conn:
        principal, token = await principals.create(conn, role=body.role, name=body.name)
    services.auth.remember(token, principal)
    return json_response(schemas.Principal(id=principal.id, role=body.role, name=body.name, token=token), status=201)


async def create_account(services, call: Call) -> web.Response:
    body: schemas.AccountCreate = call.body
    if body.kind == "system" and body.owner_id is not None:
        raise from_validation("system accounts have no owner - at `$.owner_id`")
    wanted = store.AccountRow(body.id or uuid.uuid4(), body.kind, body.currency, body.owner_id, body.name, None)
    async with services.pool.connection() as conn:
        if body.owner_id is not None and not await store.principal_exists(conn, body.owner_id):
            raise ApiError("owner_not_found")
        stored, created = await store.insert_account(conn, wanted)
        if not created and not _same_account(stored, wanted):
            raise ApiError("account_exists")
        answer = await store.account_with_balance(conn, stored.id)
    services.remember_account(stored)
    return json_response(answer, status=201 if created else 200)


def _same_account(a: store.AccountRow, b: store.AccountRow) -> bool:
    return (a.kind, a.currency, a.owner_id) == (b.kind, b.currency, b.owner_id)


async def get_account(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        account = await store.account_with_balance(conn, call.ids["account_id"])
    _authorize_account(call.principal, account)
    return json_response(account)


def _authorize_account(principal: Principal, account: schemas.Account | None) -> None:
    """Admin and auditor read everything (404 when absent); others only what they own, and an
    absent account is not theirs either (403, so ids cannot be probed)."""
    if principal.role in auth.READ_EVERYTHING:
        if account is None:
            raise ApiError("not_found")
        return
    if account is None or account.owner_id != principal.id:
        raise ApiError("forbidden")


# ---- transfers ------------------------------------------------------------------------------


def request_hash(body: schemas.TransferCreate) -> bytes:
    """What "the same body" means: the decoded request, not its spelling (spaces, key order)."""
    canonical = msgspec.json.encode(
        [str(body.from_account_id), str(body.to_account_id), body.amount, body.currency, body.reference,
         sorted(body.metadata.items())]
    )
    return hashlib.sha256(canonical).digest()


def transfer_body(entry: schemas.JournalEntry) -> schemas.Transfer:
    return schemas.transfer_from_entry(entry)


async def create_transfer(services, call: Call) -> web.Response:
    body: schemas.TransferCreate = call.body
    command = domain.TransferCommand(
        principal_id=call.principal.id,
        principal_role=call.principal.role,
        idempotency_key=call.idempotency_key,
        request_hash=request_hash(body),
        from_account_id=body.from_account_id,
        to_account_id=body.to_account_id,
        amount=body.amount,
        currency=body.currency,
        reference=body.reference,
        metadata=body.metadata,
    )
    try:
        answer = await services.committer.submit(command)
    except committer_mod.QueueFull:
        raise ApiError("queue_full") from None
    except committer_mod.Unavailable as error:
        # The connection may have died after COMMIT was sent: the outcome is unknown, and only a
        # retry with the same key tells (a replay if it committed, a fresh decision if not).
        raise ApiError(
            "unavailable", f"the transfer may or may not be committed; retry with the same Idempotency-Key: {error}"
        ) from None
    if answer.rejection is not None:
        raise ApiError(answer.rejection.value)
    headers = {"Idempotency-Replayed": "true"} if answer.replayed else None
    return json_response(transfer_body(answer.entry), status=201, headers=headers)


async def get_transfer(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        entry = await store.entry_by_transfer_id(conn, call.ids["transfer_id"])
        reads_everything = call.principal.role in auth.READ_EVERYTHING
        if entry is None:
            # As for accounts: an absent transfer is no one's, so others get 403 and cannot probe ids.
            raise ApiError("not_found" if reads_everything else "forbidden")
        if not reads_everything:
            owners = await store.account_owners(conn, [entry.from_account_id, entry.to_account_id])
            if call.principal.id not in owners.values():
                raise ApiError("forbidden")
    return json_response(transfer_body(entry))


# ---- vendor verification (the projection) ---------------------------------------------------


async def _authorize_vendor(services, principal: Principal, account_id: uuid.UUID) -> None:
    account = services.accounts.get(account_id)
    if account is None:
        async with services.pool.connection() as conn:
            account = await store.account_by_id(conn, account_id)
        if account is not None:
            services.remember_account(account)
    if principal.role in auth.READ_EVERYTHING:
        if account is None or account.kind != "vendor":
            raise ApiError("not_found", "no such vendor account")
        return
    if account is None or account.kind != "vendor" or account.owner_id != principal.id:
        raise ApiError("forbidden")


async def get_verification(services, call: Call) -> web.Response:
    vendor_id, transfer_id = call.ids["account_id"], call.ids["transfer_id"]
    await _authorize_vendor(services, call.principal, vendor_id)
    query: WaitQuery = call.query
    deadline = time.monotonic() + min(query.wait_ms, services.settings.wait_ms_max) / 1000
    while True:
        async with services.pool.connection() as conn:
            position, verification = await projections.verification(
                conn, vendor_id, transfer_id, services.settings.projector_name
            )
        if position >= query.min_position:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiError(
                "projection_behind",
                f"projection is at {position}, below min_position {query.min_position}",
                retry_after_s=1,
            )
        await services.watermark.wait_beyond(position, timeout_s=min(remaining, WAIT_POLL_S_MAX))
    headers = {PROJECTION_POSITION: str(position)}
    if verification is None:
        error = ApiError("not_found", "no such transfer to this vendor in the projection")
        response = _problem_with_headers(error, headers)
        return response
    return json_response(verification, headers=headers)


def _problem_with_headers(error: ApiError, headers: dict[str, str]) -> web.Response:
    response = problem_response(error)
    response.headers.update(headers)
    return response


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"p:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        position = int(value)
        if kind != "p" or position < 0:
            raise ValueError(cursor)
        return position
    except ValueError:
        raise ApiError(
            "validation_error",
            "after is not a cursor this API gave out",
            errors=[schemas.ValidationIssue(path="$.query.after", message="Invalid cursor")],
        ) from None


async def list_verifications(services, call: Call) -> web.Response:
    vendor_id = call.ids["account_id"]
    query: PageQuery = call.query
    after = decode_cursor(query.after)
    await _authorize_vendor(services, call.principal, vendor_id)
    async with services.pool.connection() as conn:
        position, items = await projections.verifications_page(
            conn, vendor_id, after=after, limit=query.limit, name=services.settings.projector_name
        )
    next_cursor = encode_cursor(items[-1].position) if len(items) == query.limit else None
    return json_response(schemas.VerificationPage(items=items, next=next_cursor), headers={PROJECTION_POSITION: str(position)})


# ---- the journal ----------------------------------------------------------------------------

JOURNAL_PAGE_ROWS = 500


async def get_journal(services, call: Call) -> web.StreamResponse:
    """Stream NDJSON page by page, so memory does not grow with `limit`."""
    query: JournalQuery = call.query
    response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
    await response.prepare(call.request)
    after, left = query.after, query.limit
    encoder = msgspec.json.Encoder()
    while left > 0:
        async with services.pool.connection() as conn:
            entries = await store.entries_after(conn, after, min(left, JOURNAL_PAGE_ROWS))
        if not entries:
            break
        buffer = bytearray()
        for entry in entries:
            encoder.encode_into(entry, buffer, len(buffer))
            buffer.extend(b"\n")
        await response.write(bytes(buffer))
        after, left = entries[-1].position, left - len(entries)
    await response.write_eof()
    return response


async def get_journal_head(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        head = await store.journal_head(conn)
    return json_response(head)


# ---- operations -----------------------------------------------------------------------------


async def healthz(services, call: Call) -> web.Response:
    return json_response(schemas.Health(status="ok"))


async def readyz(services, call: Call) -> web.Response:
    checks = {"database": "ok", "nats": "ok" if services.bus.connected else "down"}
    try:
        async with asyncio.timeout(2):
            async with services.pool.connection(timeout=2) as conn:
                await store.ping(conn)
    except Exception:
        checks["database"] = "down"
    ready = all(v == "ok" for v in checks.values())
    return json_response(schemas.Health(status="ready" if ready else "not_ready", checks=checks), status=200 if ready else 503)


ROUTES: list[Route] = [
    Route("POST", "/v1/principals", "create_principal", create_principal, body=schemas.PrincipalCreate,
          summary="Create a principal; its token is shown once.", answer=schemas.Principal, status=201),
    Route("POST", "/v1/accounts", "create_account", create_account, body=schemas.AccountCreate,
          summary="Create an account (idempotent by id).", answer=schemas.Account, status=201),
    Route("GET", "/v1/accounts/{account_id}", "get_account", get_account, path_ids=("account_id",),
          summary="An account with its committed balance.", answer=schemas.Account),
    Route("POST", "/v1/transfers", "create_transfer", create_transfer, body=schemas.TransferCreate, idempotency=True,
          summary="Move money between two accounts of one currency.", answer=schemas.Transfer, status=201),
    Route("GET", "/v1/transfers/{transfer_id}", "get_transfer", get_transfer, path_ids=("transfer_id",),
          summary="A committed transfer, read from the journal.", answer=schemas.Transfer),
    Route("GET", "/v1/vendors/{account_id}/transfers/{transfer_id}/verification", "get_verification",
          get_verification, path_ids=("account_id", "transfer_id"), query=WaitQuery,
          summary="Verify a transfer into a vendor account, from the projection.", answer=schemas.Verification),
    Route("GET", "/v1/vendors/{account_id}/transfers", "list_verifications", list_verifications,
          path_ids=("account_id",), query=PageQuery,
          summary="Transfers into a vendor account, from the projection, oldest first.",
          answer=schemas.VerificationPage),
    Route("GET", "/v1/journal", "get_journal", get_journal, query=JournalQuery,
          summary="Journal entries in position order, as NDJSON.", answer=schemas.JournalEntry),
    Route("GET", "/v1/journal/head", "get_journal_head", get_journal_head,
          summary="Position and hash of the last entry.", answer=schemas.JournalHead),
    Route("GET", "/healthz", "healthz", healthz, public=True, summary="Liveness.", answer=schemas.Health),
    Route("GET", "/readyz", "readyz", readyz, public=True, summary="Database and NATS reachable.",
          answer=schemas.Health),
]
