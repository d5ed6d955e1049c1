"""The aiohttp application: services, the one error middleware, and the process lifecycle."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import batches, docs, housekeeping, openapi
from api.auth import Authenticator, Principal
from api.housekeeping import Readiness, Watermark
from api.problems import ApiError, problem_response
from api.ratelimit import RateLimiter
from api.framework import ANSWER_STARTED, IDEMPOTENCY_KEY, wrap
from api.routes import ROUTES
from ledger import collector, db, logs, metrics, sweeper, tasks
from ledger.bus import EventBus
from ledger.committer import Committer
from ledger.config import Settings
from ledger.outbox import Outbox
from ledger.store import StoreUnavailable

log = logging.getLogger("ledger.api")
REQUEST_ID = "X-Request-Id"
REQUEST_ID_CHARS_MAX = 128
ACCOUNT_CACHE_MAX = 100_000
# A connection must send a whole request head within this long of opening, or of its previous
# answer, or it is closed: a client that trickles header bytes (slow loris) holds it no longer.
# aiohttp has no timer of its own for headers; its keep-alive timer is that bound (it closes a
# connection still waiting for a request head), and its default is an hour. Above the 15 s that
# aiohttp's client keeps an idle connection, so a client never reuses one the server is closing.
REQUEST_HEAD_S_MAX = 20.0
SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", object)
OPENAPI = web.AppKey("openapi", dict)
TIMEOUT_S = web.AppKey("timeout_s", float)  # settings.api.request_timeout_ms, in the unit asyncio.timeout takes
REQUEST_ID_KEY = web.RequestKey("request_id", str)


@dataclass
class Services:
    settings: Settings
    pool: object
    commit_pool: object
    bus: EventBus
    committer: Committer
    outbox: Outbox
    auth: Authenticator
    limiter: RateLimiter
    readiness: Readiness
    watermark: Watermark = field(default_factory=Watermark)
    accounts: dict = field(default_factory=dict)  # id -> AccountRow; accounts never change
    waiters: int = 0  # requests inside a `min_position` wait now; at most settings.api.waiters_max

    def remember_account(self, account) -> None:
        """Accounts are immutable once created, so a cached row never goes stale; the cache is
        bounded by dropping everything when full (a cheap, safe reset)."""
        if len(self.accounts) >= ACCOUNT_CACHE_MAX:
            self.accounts.clear()
        self.accounts[account.id] = account

    async def rate_limit(self, principal: Principal, cost: int = 1) -> None:
        wait_s = self.limiter.take(principal.id, cost)
        if wait_s > 0:
            raise ApiError("rate_limited", retry_after_s=max(1, int(wait_s + 0.999)))


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


# The request id made when a request brings none: this process's random half and a sequence, 32
# hex digits as a uuid4's would be, unique across processes without a random draw per request.
_REQUEST_ID_PREFIX = os.urandom(8).hex()
_request_numbers = itertools.count()

# (route, method, status) -> the children of HTTP_REQUESTS and HTTP_SECONDS with those labels:
# `labels()` formats and looks them up under a lock on every call. Routes and statuses are a
# closed set; methods are what clients send, so past the bound a child is looked up, not kept.
_HTTP_CHILDREN_MAX = 1_000
_http_children: dict[tuple[str, str, int], tuple] = {}


def _observe(route: str, method: str, status: int, seconds: float) -> None:
    children = _http_children.get((route, method, status))
    if children is None:
        labels = (route, method, str(status))
        children = (metrics.HTTP_REQUESTS.labels(*labels), metrics.HTTP_SECONDS.labels(*labels))
        if len(_http_children) < _HTTP_CHILDREN_MAX:
            _http_children[(route, method, status)] = children
    children[0].inc()
    children[1].observe(seconds)


@web.middleware
async def problems_middleware(request: web.Request, handler) -> web.StreamResponse:
    """The one place errors become answers: ApiError -> its problem; aiohttp's own HTTP errors
    (404 route, 405 method, 413) -> the matching code; anything else -> 500 without a trace."""
    request_id = request.headers.get(REQUEST_ID, "")
    if not request_id or len(request_id) > REQUEST_ID_CHARS_MAX or not request_id.isascii():
        request_id = f"{_REQUEST_ID_PREFIX}{next(_request_numbers) & 0xFFFF_FFFF_FFFF_FFFF:016x}"
    request[REQUEST_ID_KEY] = request_id
    logs.REQUEST_ID.set(request_id)  # for log lines and the committer (the event's X-Request-Id)
    started = time.perf_counter()
    try:
        response = await _within(request.app[TIMEOUT_S], handler, request)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as error:
        if request.get(ANSWER_STARTED):
            _cut(request, error)
        response = _problem_for(request, error, request_id)
    if not response.prepared:
        response.headers[REQUEST_ID] = request_id
    _observe(_route_name(request), request.method, response.status, time.perf_counter() - started)
    return response


async def _within(timeout_s: float, handler, request: web.Request) -> web.StreamResponse:
    """`await handler(request)`, or TimeoutError once `timeout_s` passed: what `asyncio.timeout`
    does, with one timer handle per request instead of its context manager's objects and state
    (a measurable share of a request's CPU). As there, a cancellation that is not the timer's
    (the task was also cancelled from outside) stays a cancellation."""
    task = asyncio.current_task()
    cancelling = task.cancelling()
    expired: list[bool] = []
    loop = asyncio.get_running_loop()
    timer = loop.call_at(loop.time() + timeout_s, _expire, task, expired)
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        if expired and task.uncancel() <= cancelling:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
    if expired:
        task.uncancel()  # the handler swallowed the timer's cancellation and answered anyway
    return response


def _expire(task: asyncio.Task, expired: list[bool]) -> None:
    expired.append(True)
    task.cancel()


def _cut(request: web.Request, error: Exception) -> None:
    log.warning("%s %s failed after its answer began; closing the connection: %r", request.method, request.path, error)
    if request.transport is not None:
        request.transport.abort()
    raise ConnectionResetError("the answer was cut short") from error


def _problem_for(request: web.Request, error: Exception, request_id: str) -> web.Response:
    """The one mapping of every error to its problem answer."""
    if isinstance(error, ApiError):
        return problem_response(error)
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return problem_response(ApiError("body_too_large"))
    if isinstance(error, web.HTTPNotFound):
        return problem_response(ApiError("not_found", f"no route {request.path}"))
    if isinstance(error, web.HTTPMethodNotAllowed):
        response = problem_response(ApiError("method_not_allowed", f"{request.method} is not allowed on {request.path}"))
        response.headers["Allow"] = ", ".join(sorted(error.allowed_methods))  # RFC 9110: a 405 says what is
        return response
    if isinstance(error, TimeoutError):
        # A write that timed out may still commit (its batch is in flight): say so, as for
        # `unavailable`, since only a retry with the same key can tell.
        detail = UNKNOWN_OUTCOME if request.headers.get(IDEMPOTENCY_KEY) else None
        return problem_response(ApiError("timeout", detail))
    if isinstance(error, StoreUnavailable):
        # The database is down or restarting (a lost connection, an empty pool's PoolTimeout):
        # the request can be retried, so it is a 503 like the committer's, never a 500.
        log.warning("database unavailable: %s", error)
        return problem_response(ApiError("unavailable", "the database is unavailable"))
    log.error("unhandled error", exc_info=error, extra={"request_id": request_id})
    return problem_response(ApiError("internal_error", f"request id {request_id}"))


UNKNOWN_OUTCOME = "the request may or may not have been committed; retry with the same Idempotency-Key"


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


def build_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[problems_middleware], client_max_size=settings.api.body_bytes_max)
    app[SETTINGS] = settings
    app[TIMEOUT_S] = settings.api.request_timeout_ms / 1000
    app.cleanup_ctx.append(_lifecycle)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _late_bound(route, app))
    app.router.add_get("/openapi.json", openapi_handler)
    docs.add_routes(app)
    if settings.http.metrics_port is None:
        app.router.add_get("/metrics", metrics_handler)
    document = openapi.document(ROUTES, metrics=settings.http.metrics_port is None)
    app[OPENAPI] = batches.document_items_cap(document, settings.api.batch_items_max)
    return app


def _late_bound(route, app: web.Application):
    """Handlers are bound to the services once they exist (after start-up)."""
    return wrap(route, lambda: app[SERVICES])


async def _lifecycle(app: web.Application):
    settings: Settings = app[SETTINGS]
    dialect = await db.wait_for_dialect(settings.database.url)
    timeouts = db.timeouts_from(settings.database)
    pool = db.make_pool(settings.database.url, role=settings.api.db_role, size_max=settings.api.pool_size_max,
                        dialect=dialect, name="api-read", timeouts=timeouts)
    commit_pool = db.make_pool(settings.database.url, role=settings.api.db_role, size_max=2, serializable=True,
                               dialect=dialect, name="api-commit", timeouts=timeouts)
    await pool.open(wait=True)
    await commit_pool.open(wait=True)
    bus = EventBus.from_settings(settings.nats, name="ledger-api")
    outbox = Outbox(pool=pool, bus=bus, sweep_interval_ms=settings.committer.outbox_sweep_interval_ms,
                    relaxed_commit=dialect.relaxed_commit())
    committer = Committer(
        pool=commit_pool,
        batch_max=settings.committer.batch_max,
        queue_max=settings.committer.queue_max,
        batch_linger_ms=settings.committer.batch_linger_ms,
        commit_retries_max=settings.committer.commit_retries_max,
        publish=outbox.publish,
        sql_dialect=dialect,
    )
    services = Services(
        settings=settings, pool=pool, commit_pool=commit_pool, bus=bus, committer=committer, outbox=outbox,
        auth=Authenticator(pool, cache_ms=settings.api.auth_cache_ms),
        limiter=RateLimiter(rate_per_s=settings.api.rate_per_s, burst=settings.api.rate_burst),
        readiness=Readiness(pool),
    )
    app[SERVICES] = services
    bus.start()
    committer.start()
    outbox.start()
    await services.readiness.probe_once()
    background = _start_background(services)
    try:
        yield
    finally:
        await tasks.cancel_all(background)
        await committer.stop()
        await outbox.stop()
        await bus.close()
        await commit_pool.close()
        await pool.close()


def _start_background(services: Services) -> list[asyncio.Task]:
    settings = services.settings

    async def forget_keys() -> None:
        retention_s = settings.committer.idempotency_retention_s
        deleted = await housekeeping.forget_idempotency_keys(services.pool, retention_s=retention_s)
        if deleted:
            log.info("forgot %d idempotency keys older than %d s", deleted, retention_s)

    async def expire_holds() -> None:
        await sweeper.expire_due_holds(services.pool, services.committer,
                                       batch_max=settings.committer.hold_sweep_batch_max)

    return [
        asyncio.create_task(_follow_watermark(services), name="watermark"),
        asyncio.create_task(services.readiness.probe_forever(), name="readiness"),
        asyncio.create_task(housekeeping.every(housekeeping.IDEMPOTENCY_SWEEP_INTERVAL_S, forget_keys,
                                               "idempotency sweep"), name="idempotency-sweep"),
        asyncio.create_task(housekeeping.every(housekeeping.TOKEN_USAGE_FLUSH_INTERVAL_S, services.auth.flush_usage,
                                               "token usage flush"), name="token-usage"),
        asyncio.create_task(housekeeping.every(settings.committer.hold_sweep_interval_ms / 1000, expire_holds,
                                               "hold expiry"), name="hold-expiry"),
    ]


async def _follow_watermark(services: Services) -> None:
    if await services.bus.wait_connected(timeout_s=3600 * 24 * 365):
        await services.bus.on_watermark(services.watermark.announce)


async def serve(settings: Settings, *, mounts: Sequence[Callable[[web.Application], None]] = ()) -> None:
    """Run the API until cancelled (SIGTERM/SIGINT): stop accepting, finish the batches in flight.
    `mounts` add routes of the composition root's choosing (the console) before it starts."""
    app = build_app(settings)
    for mount in mounts:
        mount(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10,
                           keepalive_timeout=REQUEST_HEAD_S_MAX)
    await runner.setup()
    # With LEDGER_HTTP_REUSE_PORT several API processes share one port and the kernel spreads
    # connections between them: Python's HTTP handling then uses every core.
    site = web.TCPSite(runner, settings.http.host, settings.http.port, reuse_address=True,
                       reuse_port=settings.http.reuse_port or None)
    await site.start()
    metrics_runner = None
    if settings.http.metrics_port is not None:
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", metrics_handler)
        metrics_runner = web.AppRunner(metrics_app, access_log=None, handle_signals=False,
                                       keepalive_timeout=REQUEST_HEAD_S_MAX)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, settings.http.host, settings.http.metrics_port).start()
    log.info("API listening on http://%s:%d", settings.http.host, settings.http.port)
    try:
        with collector.settled():
            await asyncio.Event().wait()
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()

