"""The API's small routing framework: what a route declares, and the checks run before its handler.

A `Route` says once who may call it (`roles`), which problems its handler can answer (`codes`),
which answers it gives and which response headers it sets. `wrap` enforces the roles and
`api.openapi` documents all of it; the problems every route of a kind can answer (401 for a route
that needs a token, 413 for one with a body, ...) are added here from what the route declares.

The wrapper checks in the contract's order: authentication (401), request shape (400/413:
path, headers, query, body), role (403), then ownership (403/404) for a route that declares whose
its resource is (`Ownership`). Business rules come after, in the handler and the committer.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import typing
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Awaitable, Callable, Collection, Mapping

import msgspec
from aiohttp import web

import schemas
from api import auth
from api.auth import Principal
from api.problems import CODES, ApiError, from_validation
from ledger import config

IDEMPOTENCY_KEY = "Idempotency-Key"
PROJECTION_POSITION = "Ledger-Projection-Position"
JSON = "application/json"
NDJSON = "application/x-ndjson"
ALL_ROLES: frozenset[str] = frozenset(typing.get_args(schemas.Role))
# Set by a handler once its 200 has started (a stream): from then on a failure cannot become a
# problem answer, only a cut connection (a second response written into the body would look like
# data to the reader).
ANSWER_STARTED = web.RequestKey("answer_started", bool)

# A page cursor is the unpadded base64url of the position as 8 big-endian bytes, below 2^63, or ""
# for the first page: the pattern accepts exactly the strings that decode to such a position. The
# empty alternative is `(?!\n)` rather than nothing because Python's `$` (msgspec's) also matches
# before a final newline, where JSON Schema's does not; the length bounds the other alternative.
CURSOR_BYTES = 8
CURSOR_CHARS = 11  # unpadded base64 of CURSOR_BYTES
CURSOR_PATTERN = "^(?:[A-Za-f][A-Za-z0-9_-]{9}[AEIMQUYcgkosw048]|(?!\\n))$"
Cursor = Annotated[str, msgspec.Meta(pattern=CURSOR_PATTERN, max_length=CURSOR_CHARS,
                                     description="Opaque: `next` of the previous page, or empty for the first.")]


# The cursor of a list in id order (accounts): the unpadded base64url of the last id's 16 bytes.
# 22 characters carry 132 bits, so the last one has its 4 low bits clear; every string the
# pattern accepts decodes to a UUID.
ID_CURSOR_BYTES = 16
ID_CURSOR_CHARS = 22
ID_CURSOR_PATTERN = "^(?:[A-Za-z0-9_-]{21}[AQgw]|(?!\\n))$"
IdCursor = Annotated[str, msgspec.Meta(pattern=ID_CURSOR_PATTERN, max_length=ID_CURSOR_CHARS,
                                       description="Opaque: `next` of the previous page, or empty for the first.")]


class JournalQuery(msgspec.Struct, forbid_unknown_fields=True):
    after: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=schemas.JOURNAL_LIMIT_MAX)] = 1000


class PageQuery(msgspec.Struct, forbid_unknown_fields=True):
    after: Cursor = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=schemas.PAGE_LIMIT_MAX)] = 100


class IdPageQuery(msgspec.Struct, forbid_unknown_fields=True):
    after: IdCursor = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=schemas.PAGE_LIMIT_MAX)] = 100


# An RFC 3339 date-time with its offset, as JSON Schema's `date-time` format means it; the pattern
# keeps out what msgspec alone would take for a time (a bare number is a Unix time to it).
RFC3339_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_FRACTION = re.compile(r"\.([0-9]+)")


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 date-time (already matching RFC3339_PATTERN) as an aware datetime; ValueError
    when it names no real moment. A leap second counts as the end of its minute's 59th second,
    digits past microseconds are dropped, and year 0 (before any entry anyway) as year 1."""
    text = text.upper()
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    if text[17:19] == "60":
        text = text[:17] + "59" + (text[19:] if text[19:20] == "." else ".999999" + text[19:])
    if text.startswith("0000-"):
        text = "0001-" + text[5:]
    return dt.datetime.fromisoformat(text)


class PointQuery(msgspec.Struct, forbid_unknown_fields=True):
    """A balance as it was: after a journal position, or after the last entry at or before a time.
    At most one of the two (OpenAPI cannot say so; the answer is 400 `validation_error`)."""

    at_position: Annotated[int, msgspec.Meta(
        ge=0, le=schemas.POSITION_MAX, description="Balance right after this journal position (at most one of the two)."
    )] | None = None
    as_of: Annotated[str, msgspec.Meta(
        pattern=RFC3339_PATTERN, extra_json_schema={"format": "date-time"},
        description="Balance after the last entry committed at or before this RFC 3339 time (at most one of the two).",
    )] | None = None

    def __post_init__(self) -> None:
        if self.at_position is not None and self.as_of is not None:
            raise ValueError("give at most one of at_position and as_of - at `$.as_of`")
        if self.as_of is not None:
            try:
                parse_time(self.as_of)
            except ValueError:
                raise ValueError("not a real RFC 3339 date-time - at `$.as_of`") from None


class WaitQuery(msgspec.Struct, forbid_unknown_fields=True):
    min_position: Annotated[int, msgspec.Meta(ge=0)] = 0
    wait_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0


class EmptyQuery(msgspec.Struct, forbid_unknown_fields=True):
    pass


@dataclass(frozen=True)
class Header:
    """A response header a route sets: `on` maps each status it comes with to whether it is
    always there (True) or only on some answers of that status (False)."""

    name: str
    description: str
    on: Mapping[int, bool]
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string", "pattern": "^[0-9]+$"})


@dataclass(frozen=True, slots=True)
class Owned:
    """What an owner lookup found: the resource a route acts on, and the principals that own it."""

    resource: Any
    owners: Collection[uuid.UUID | None]


@dataclass(frozen=True)
class Ownership:
    """Whose the resource of a route is: `lookup(services, value, owners=...)` with the value of
    the path id (or query field) `key` finds it, and its owners when `owners` is true (admin and
    auditor need none), or None when there is no such resource. `absent` is the detail of the 404
    that admin and auditor get then. With `readers_look` False admin and auditor act on anything
    without a lookup, and the handler answers for an absent resource in its own terms (a proof
    past the head is `position_out_of_range`)."""

    key: str
    lookup: Callable[..., Awaitable[Owned | None]]
    absent: str | None = None
    readers_look: bool = True


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[..., Awaitable[web.StreamResponse]]
    answers: Mapping[int, type]  # status -> the body of a successful (or, for /readyz, a not-ready) answer
    roles: frozenset[str] = frozenset()  # who may call it; none for a public route
    codes: frozenset[str] = frozenset()  # problems the handler can answer beyond those `problem_codes` adds
    headers: tuple[Header, ...] = ()
    body: type | None = None
    query: type = EmptyQuery
    path_ids: tuple[str, ...] = ()
    ownership: Ownership | None = None
    idempotency: bool = False
    public: bool = False
    media: str = JSON
    summary: str = ""
    body_bytes_max: int | None = None  # this route's body limit, when not the settings' (bytes)

    def __post_init__(self) -> None:
        assert self.public == (not self.roles), f"{self.name}: a route is public exactly when it names no roles"
        assert self.roles <= ALL_ROLES, f"{self.name}: unknown roles {self.roles - ALL_ROLES}"
        assert self.codes <= CODES.keys(), f"{self.name}: undocumented codes {self.codes - CODES.keys()}"
        clash = {CODES[code][0] for code in self.problem_codes} & self.answers.keys()
        assert not clash, f"{self.name}: statuses {clash} are both an answer and a problem"
        if self.ownership is not None:
            key, query_fields = self.ownership.key, {spec.name for spec in msgspec.structs.fields(self.query)}
            assert key in self.path_ids or key in query_fields, f"{self.name}: owner key {key} is not a path id or query field"

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def problem_codes(self) -> frozenset[str]:
        """Every problem code this route can answer: its own and those of the checks `wrap` runs."""
        codes = set(self.codes)
        if not self.public:
            # A token is looked up (the database may be down, the request may time out), the caller
            # is rate limited, and the query string is checked (unknown parameters are refused).
            codes |= {"unauthenticated", "rate_limited", "unavailable", "timeout", "validation_error"}
            if self.roles != ALL_ROLES:
                codes.add("forbidden")
        if self.ownership is not None:
            codes.add("forbidden")  # what the caller does not own, or what does not exist
            if self.ownership.readers_look and self.roles & auth.READ_EVERYTHING:
                codes.add("not_found")
        if self.path_ids:
            codes.add("validation_error")
        if self.idempotency:
            codes |= {"idempotency_key_required", "invalid_idempotency_key"}
        if self.body is not None:
            codes |= {"invalid_json", "validation_error", "body_too_large"}
        return frozenset(codes)


@dataclass
class Call:
    """What a handler receives once the wrapper's checks passed."""

    request: web.Request
    principal: Principal | None
    body: Any
    query: Any
    ids: dict[str, uuid.UUID]
    idempotency_key: str | None
    resource: Any = None  # what the route's ownership lookup found (None for a reader it skips)


def wrap(route: Route, services_of: Callable[[], Any]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The route's handler behind its checks. `services_of` gives the services once they exist
    (after start-up); they are looked up on the first request and kept."""
    body_decoder = msgspec.json.Decoder(route.body) if route.body is not None else None
    no_query = _empty_query(route.query)
    services = None

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal services
        if services is None:
            services = services_of()
        principal = None
        if not route.public:
            principal = await services.auth.authenticate(request.headers.get("Authorization"), client=request.remote)
            await services.rate_limit(principal)
        ids = _path_ids(request, route.path_ids) if route.path_ids else {}
        key = _idempotency_key(request) if route.idempotency else None
        # Probes (public routes) answer whatever query string a load balancer adds.
        query = None
        if not route.public:
            query = no_query if no_query is not None and not request.query_string else _query(request, route.query)
        body = None
        if body_decoder is not None:
            raw = await _read_body(request, route.body_bytes_max or services.settings.api.body_bytes_max)
            body = _decode(body_decoder, route.body, raw)
        if principal is not None:
            auth.require_role(principal, route.roles, route.name)
        call = Call(request, principal, body, query, ids, key)
        if route.ownership is not None:
            owner_key = route.ownership.key
            value = ids[owner_key] if owner_key in ids else getattr(query, owner_key)
            call.resource = await authorize_owner(route.ownership, services, principal, value)
        return await route.handler(services, call)

    return handler


async def authorize_owner(ownership: Ownership, services, principal: Principal, value: Any) -> Any:
    """The one ownership rule, for the resource that `value` names (a route's, or an item's of a
    batch). Admin and auditor reach every resource, and get 404 for one that does not exist;
    every other role reaches only what its principal owns, and a resource that does not exist is
    no one's (403 as well, so ids cannot be probed). Returns the resource."""
    reads_everything = principal.role in auth.READ_EVERYTHING
    if reads_everything and not ownership.readers_look:
        return None
    owned = await ownership.lookup(services, value, owners=not reads_everything)
    if reads_everything:
        if owned is None:
            raise ApiError("not_found", ownership.absent)
    elif owned is None or principal.id not in owned.owners:
        raise ApiError("forbidden")
    return owned.resource


def _empty_query(kind: type):
    """What an absent query string decodes to, made once (every query type has defaults only);
    None when `kind` requires a parameter, so an absent one is refused as before."""
    try:
        return msgspec.convert({}, kind)
    except msgspec.ValidationError:
        return None


async def _read_body(request: web.Request, limit: int) -> bytes:
    too_large = f"the body exceeds this route's {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("body_too_large", too_large)
    content = request.content
    chunks, size = [], 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise ApiError("body_too_large", too_large)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _decode(decoder: msgspec.json.Decoder, kind: type, raw: bytes):
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        return _decode_integral_floats(kind, raw, error)
    except msgspec.DecodeError as error:
        raise ApiError("invalid_json", f"body is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        # msgspec raises this (not DecodeError) for invalid UTF-8 inside a JSON string.
        raise ApiError("invalid_json", f"body is not valid UTF-8: {error.reason} at byte {error.start}") from None


def _decode_integral_floats(kind: type, raw: bytes, error: msgspec.ValidationError):
    """JSON Schema counts 584.0 as an integer, msgspec does not. Only once the typed decoder has
    refused a body (so the fast path stays fast): decode it generically, turn integral floats into
    ints and convert strictly, so "584" and 584.5 are still refused. Any other refusal is the
    typed decoder's, with its path."""
    try:
        loose = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise from_validation(str(error)) from None
    if not _has_float(loose):
        raise from_validation(str(error)) from None
    try:
        return msgspec.convert(_integral_floats_as_ints(loose), kind, strict=True)
    except msgspec.ValidationError:
        raise from_validation(str(error)) from None


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    return False


def _query(request: web.Request, kind: type):
    params = dict(request.query)
    if len(params) != len(request.query):
        raise ApiError("validation_error", "a query parameter is repeated")
    prefix = getattr(kind, "PREFIXED", None)
    if prefix is not None:
        params = _gather_prefixed(params, prefix)
    try:
        return msgspec.convert(params, kind, strict=False)
    except msgspec.ValidationError as error:
        raise from_validation(str(error), root="$.query") from None


def _gather_prefixed(params: dict[str, str], prefix: str) -> dict[str, Any]:
    """A family of parameters `PREFIX.NAME=VALUE` (a query type's `PREFIXED`, such as the metadata
    filters of a search) as one field `PREFIX` holding {NAME: VALUE}, which the type then checks.
    The bare name is not a parameter."""
    if prefix in params:
        raise ApiError("validation_error", f"give `{prefix}.NAME=VALUE`, not `{prefix}`",
                       errors=[schemas.ValidationIssue(path=f"$.query.{prefix}", message="Unknown parameter")])
    dotted = prefix + "."
    gathered = {name: value for name, value in params.items() if not name.startswith(dotted)}
    gathered[prefix] = {name[len(dotted):]: value for name, value in params.items() if name.startswith(dotted)}
    return gathered


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


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(position.to_bytes(CURSOR_BYTES, "big")).decode().rstrip("=")


def encode_id_cursor(last: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(last.bytes).decode().rstrip("=")


def decode_id_cursor(cursor: str) -> uuid.UUID | None:
    """`cursor` already matched ID_CURSOR_PATTERN: it decodes to an id, or is empty (None)."""
    if not cursor:
        return None
    return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=="))


def decode_cursor(cursor: str) -> int:
    """`cursor` already matched CURSOR_PATTERN (the query's type says so): it decodes."""
    if not cursor:
        return 0
    return int.from_bytes(base64.urlsafe_b64decode(cursor + "="), "big")
