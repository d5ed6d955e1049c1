"""How the console reaches the API: its public HTTP routes over loopback, with the session's token.

The console adds no second way to read or write money: every page is made of these calls, and the
API applies its roles, ownership and limits to them as to any client. Answers stay the JSON the API
sent (a page shows them; the verifier in the browser needs an entry exactly as received). A problem
answer becomes `ApiFailure`, which the pages put in words (`words`), never shown raw.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

# One call to the API at most; a page makes a handful. Below the API's own request timeout would
# cut a `min_position` wait short, so the console never asks for long waits.
CALL_TIMEOUT_S = 10.0
CONNECTIONS_MAX = 100  # to the API, shared by every session of this process
STREAM_CHUNK_BYTES = 64 * 1024


class ApiFailure(Exception):
    """The API answered a problem (or could not be reached: status 503, code `unreachable`)."""

    def __init__(self, status: int, code: str, title: str = "", detail: str = "") -> None:
        super().__init__(f"{status} {code}: {detail or title}")
        self.status, self.code, self.title, self.detail = status, code, title, detail


# What a person at the screen is told, by the problem's code; other codes show the API's title.
WORDS: dict[str, str] = {
    "unauthenticated": "That token is not valid, or it was revoked.",
    "forbidden": "Your role may not do that here.",
    "not_found": "There is no such thing, or it is not yours.",
    "insufficient_funds": "The account cannot afford that: it would go below its credit line.",
    "account_frozen": "The paying account is frozen: it cannot pay or hold money until an admin unfreezes it.",
    "account_closed": "An account of this payment is closed: nothing goes in or out of it.",
    "account_not_empty": "The account still holds money or has pending holds, so it cannot be closed.",
    "balance_limit_exceeded": "That would carry the receiving account past its cap (its highest allowed balance).",
    "currency_mismatch": "The two accounts hold different currencies.",
    "same_account": "An account cannot pay itself.",
    "account_not_found": "There is no such account.",
    "refund_exceeds_transfer": "Refunds would add up to more than the payment.",
    "not_refundable": "That entry cannot be refunded.",
    "idempotency_key_reused": "This form was already sent with other values; open it again.",
    "validation_error": "Some field is not valid.",
    "rate_limited": "Too many requests; wait a moment and try again.",
    "unreachable": "The ledger's API cannot be reached right now.",
    "unavailable": "The ledger is unavailable right now; try again shortly.",
    "webhook_url_not_allowed": "That webhook URL is not allowed.",
    "hold_not_pending": "That hold is already closed.",
    "capture_exceeds_hold": "The capture is more than the hold.",
}


def words(failure: ApiFailure) -> str:
    """The failure as one sentence for the page, with the API's detail when it adds something."""
    said = WORDS.get(failure.code) or failure.title or "The request failed."
    if failure.detail and failure.detail != failure.title and failure.code not in ("unauthenticated", "unreachable"):
        return f"{said} ({failure.detail})"
    return said


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the decoded JSON, or None (204)
    raw: bytes  # exactly as received
    replayed: bool = False  # the API's Idempotency-Replayed: an earlier request with this key did it


class Upstream:
    """One connection pool to the API for the whole process; `call` is one route, one token."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running loop
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=CONNECTIONS_MAX))
        return self._session

    async def call(self, method: str, path: str, token: str, *, params: dict | None = None,
                   body: Any = None, idempotency_key: str | None = None) -> Answer:
        headers = {"Authorization": f"Bearer {token}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(method, self.base_url + path, params=_plain(params), data=data,
                                            headers=headers) as response:
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiFailure(503, "unreachable", detail=type(error).__name__) from None
        return _answer(response.status, raw, response.headers.get("Idempotency-Replayed") == "true")

    @contextlib.asynccontextmanager
    async def stream(self, path: str, token: str, **params: Any) -> AsyncIterator[AsyncIterator[bytes]]:
        """A long GET (the journal export) as chunks: no total timeout, but each read bounded."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CALL_TIMEOUT_S, sock_read=CALL_TIMEOUT_S)
        try:
            response = await self._http().get(self.base_url + path, params=_plain(params), timeout=timeout,
                                              headers={"Authorization": f"Bearer {token}"})
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiFailure(503, "unreachable", detail=type(error).__name__) from None
        async with response:
            if response.status >= 400:
                _answer(response.status, await response.read(), False)
            yield response.content.iter_chunked(STREAM_CHUNK_BYTES)

    async def get(self, path: str, token: str, **params: Any) -> Any:
        return (await self.call("GET", path, token, params=params)).body


def _plain(params: dict | None) -> dict | None:
    """Query parameters as text, leaving out the unset ones."""
    if params is None:
        return None
    return {key: str(value) for key, value in params.items() if value is not None and value != ""}


def _answer(status: int, raw: bytes, replayed: bool) -> Answer:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if status >= 400:
        problem = body if isinstance(body, dict) else {}
        raise ApiFailure(status, str(problem.get("code", "http_error")), str(problem.get("title", "")),
                         str(problem.get("detail", "")))
    return Answer(status, body, raw, replayed)
