"""How the client talks to the API: one principal's session, its problems and its retries.

Every problem answer is raised as `LedgerProblem`; docs/client.md "Retries" says what is repeated.

The client retries by itself what the contract says may be retried (429 `rate_limited`, 503
`queue_full`, `unavailable`, `timeout`, a dropped connection), but only where a repeat cannot apply
a request twice: reads, transfers (the same `Idempotency-Key` on every attempt, so a repeat after an
unknown outcome is a replay) and account creation (the client chooses the id, so a repeat is a
replay). Principal creation is not idempotent and is repeated only when the server provably did
not process it. `retry_total_s` and `retry_attempts_max` bound it all; `retry_total_s=0` turns it off.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import msgspec

import schemas

T = TypeVar("T")

# One attempt of one request, the streaming of its answer included.
TIMEOUT_S_DEFAULT = 30.0
# No retry starts, and no wait before one ends, later than this after the call began.
RETRY_TOTAL_S_DEFAULT = 30.0
# Attempts of one call, the first one included.
RETRY_ATTEMPTS_MAX_DEFAULT = 10
# Exponential backoff when the server did not say when to come back: the n-th retry waits between
# half and all of min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**n), so retries spread out but never at once.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
BACKOFF_DOUBLINGS_MAX = 16  # past BACKOFF_MAX_S long before; keeps 2**n small
# The least a retry's own timeout may be: a wait that overshoots the deadline a little must not leave
# the attempt no time at all (aiohttp reads a total of 0 as "no timeout").
RETRY_ATTEMPT_S_MIN = 0.1
# Added at random to the server's Retry-After, so clients told the same second do not all come back
# in the same millisecond.
RETRY_AFTER_JITTER_S_MAX = 0.25
# Problem codes that mean "not done now, try again" (contract: 429, 503). For `unavailable` and
# `timeout` the request may or may not have been applied, so only idempotent requests repeat them.
RETRYABLE_CODES = frozenset({"rate_limited", "queue_full", "unavailable", "timeout"})
# A request that is not idempotent repeats only answers given before it was processed: the rate
# limiter answers before any handler runs.
UNPROCESSED_CODES = frozenset({"rate_limited"})
# Failures of the connection: the request may or may not have reached the server.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError,
)
PROBLEM_MEDIA_TYPE = "application/problem+json"
# What a non-problem error answer (a proxy's HTML page, say) keeps of its body in `detail`.
FOREIGN_DETAIL_CHARS_MAX = 200

_decoders: dict[Any, msgspec.json.Decoder] = {}


def _decoder(kind: Any) -> msgspec.json.Decoder:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder


class LedgerProblem(Exception):
    """An answer of 400 and above, as the server's problem details said it."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        detail: str,
        title: str = "",
        errors: list[schemas.ValidationIssue] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.errors = errors or []
        self.retry_after_s = retry_after_s


class Transport:
    """One principal's session with the API: its token, the connection pool and the retry bounds.
    Only the instance that created the session closes it."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        retry_total_s: float = RETRY_TOTAL_S_DEFAULT,
        retry_attempts_max: int = RETRY_ATTEMPTS_MAX_DEFAULT,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        if retry_total_s < 0:
            raise ValueError(f"retry_total_s must be 0 (no retries) or more, not {retry_total_s}")
        if retry_attempts_max < 1:
            raise ValueError(f"retry_attempts_max counts the first attempt: at least 1, not {retry_attempts_max}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s
        self._retry_total_s = retry_total_s
        self._retry_attempts_max = retry_attempts_max
        self._owns_session = session is None
        self._session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    def _shared_options(self) -> dict[str, Any]:
        """What another principal's view over the same connections keeps of this one."""
        return {"session": self._session, "timeout_s": self._timeout_s, "retry_total_s": self._retry_total_s,
                "retry_attempts_max": self._retry_attempts_max}

    async def close(self) -> None:
        if self._owns_session:
            await self._session.close()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        answer: type[T] | None,
        *,
        body: msgspec.Struct | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
        also_retry: frozenset[str] = frozenset(),
    ) -> T:
        """One call, retried as `_retrying` says; every attempt sends the same bytes and headers
        (the `Idempotency-Key` included)."""
        sent = self._headers(headers)
        data = None
        if body is not None:
            data = schemas.encode(body)
            sent["Content-Type"] = "application/json"
        url = self.base_url + path

        async def attempt(timeout: aiohttp.ClientTimeout) -> T:
            async with self._session.request(
                method, url, data=data, params=params, headers=sent, timeout=timeout
            ) as response:
                await _raise_for_problem(response)
                if answer is None:  # 204
                    return None
                return _decoder(answer).decode(await response.read())

        return await self._retrying(attempt, idempotent=idempotent, also_retry=also_retry)

    async def _retrying(
        self,
        attempt: Callable[[aiohttp.ClientTimeout], Awaitable[T]],
        *,
        idempotent: bool,
        also_retry: frozenset[str] = frozenset(),
    ) -> T:
        """Run `attempt` until it succeeds, fails in a way that must not be repeated, or the
        bounds are reached: `retry_attempts_max` attempts, and no retry (nor the wait before it)
        ending later than `retry_total_s` after the start. The first attempt has `timeout_s`;
        a retry has what is left of `retry_total_s`, at most `timeout_s`. The last failure is
        raised as it was, with a note of the attempts made."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._retry_total_s
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        for attempt_number in range(1, self._retry_attempts_max + 1):
            try:
                return await attempt(timeout)
            except Exception as error:
                delay_s = _retry_delay_s(error, attempt_number, idempotent=idempotent, also_retry=also_retry)
                if delay_s is None or attempt_number == self._retry_attempts_max or loop.time() + delay_s >= deadline:
                    if attempt_number > 1:
                        error.add_note(f"gave up after {attempt_number} attempts in {loop.time() - started:.1f}s")
                    raise
            await asyncio.sleep(delay_s)
            left_s = max(RETRY_ATTEMPT_S_MIN, deadline - loop.time())
            timeout = aiohttp.ClientTimeout(total=min(self._timeout_s, left_s))
        raise AssertionError("unreachable: the last attempt returns or raises")


def _retry_delay_s(error: Exception, attempt_number: int, *, idempotent: bool, also_retry: frozenset[str]) -> float | None:
    """How long to wait before repeating a request that failed with `error`, or None when it
    must not be repeated. A request that is not idempotent is repeated only when it provably was
    not processed: the connection was never opened, or the rate limiter refused it."""
    if isinstance(error, LedgerProblem):
        codes = (RETRYABLE_CODES | also_retry) if idempotent else UNPROCESSED_CODES
        if error.code not in codes:
            return None
        if error.retry_after_s is not None:
            return error.retry_after_s + random.uniform(0, RETRY_AFTER_JITTER_S_MAX)
        return _backoff_s(attempt_number)
    if isinstance(error, aiohttp.ClientSSLError):
        return None  # a certificate does not get better by asking again
    unsent = isinstance(error, aiohttp.ClientConnectorError)
    if unsent or (idempotent and isinstance(error, CONNECTION_ERRORS)):
        return _backoff_s(attempt_number)
    return None


def _backoff_s(attempt_number: int) -> float:
    doublings = min(attempt_number - 1, BACKOFF_DOUBLINGS_MAX)
    ceiling_s = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**doublings)
    return ceiling_s / 2 + random.uniform(0, ceiling_s / 2)


async def _raise_for_problem(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    raw = await response.read()
    retry_after = response.headers.get("Retry-After")
    retry_after_s = int(retry_after) if retry_after and retry_after.isdigit() else None
    if response.content_type == PROBLEM_MEDIA_TYPE:
        problem = _decoder(schemas.Problem).decode(raw)
        raise LedgerProblem(
            status=problem.status, code=problem.code, detail=problem.detail, title=problem.title,
            errors=problem.errors, retry_after_s=retry_after_s,
        )
    detail = raw.decode("utf-8", "replace")[:FOREIGN_DETAIL_CHARS_MAX]
    raise LedgerProblem(status=response.status, code="http_error", detail=detail, retry_after_s=retry_after_s)
