"""An async, typed Python client of the ledger's HTTP API (contract v1).

Answers are decoded into the same msgspec Structs the server encodes them from (`schemas`), so a
field the server adds later is ignored, not an error. Every problem answer (RFC 9457) is raised
as `LedgerProblem` carrying its `status`, stable `code`, `detail` and validation `errors`.

    async with LedgerClient("http://127.0.0.1:8080", token=admin_token) as ledger:
        transfer = await ledger.transfer(from_account_id=a, to_account_id=b, amount=450,
                                         currency="USD", idempotency_key="order-17")

See docs/client.md.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
import msgspec

import schemas

T = TypeVar("T")

TIMEOUT_S_DEFAULT = 30.0
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


class LedgerClient:
    """One principal's view of the API. `as_principal` gives another principal's view over the
    same connection pool; only the client that created the session closes it."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = TIMEOUT_S_DEFAULT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._owns_session = session is None
        self._session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    def as_principal(self, token: str) -> LedgerClient:
        return LedgerClient(self.base_url, token=token, session=self._session)

    async def close(self) -> None:
        if self._owns_session:
            await self._session.close()

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- principals and accounts ------------------------------------------------------------

    async def create_principal(self, *, role: schemas.Role, name: str) -> schemas.Principal:
        """The token in the answer is shown once; keep it."""
        body = schemas.PrincipalCreate(role=role, name=name)
        return await self._call("POST", "/v1/principals", schemas.Principal, body=body)

    async def create_account(
        self,
        *,
        kind: schemas.AccountKind,
        currency: str,
        id: uuid.UUID | None = None,
        owner_id: uuid.UUID | None = None,
        name: str = "",
    ) -> schemas.Account:
        """Idempotent by `id`: the same id with the same kind, currency and owner returns it again."""
        body = schemas.AccountCreate(kind=kind, currency=currency, id=id, owner_id=owner_id, name=name)
        return await self._call("POST", "/v1/accounts", schemas.Account, body=body)

    async def get_account(self, account_id: uuid.UUID) -> schemas.Account:
        return await self._call("GET", f"/v1/accounts/{account_id}", schemas.Account)

    # ---- transfers --------------------------------------------------------------------------

    async def transfer(
        self,
        *,
        from_account_id: uuid.UUID,
        to_account_id: uuid.UUID,
        amount: int,
        currency: str,
        idempotency_key: str,
        reference: str = "",
        metadata: dict[str, str] | None = None,
    ) -> schemas.Transfer:
        """Commit a transfer. Retrying with the same `idempotency_key` and arguments (after a
        timeout or a 503) is safe: it is applied at most once and answers the same transfer."""
        body = schemas.TransferCreate(
            from_account_id=from_account_id,
            to_account_id=to_account_id,
            amount=amount,
            currency=currency,
            reference=reference,
            metadata=metadata or {},
        )
        headers = {"Idempotency-Key": idempotency_key}
        return await self._call("POST", "/v1/transfers", schemas.Transfer, body=body, headers=headers)

    async def get_transfer(self, transfer_id: uuid.UUID) -> schemas.Transfer:
        return await self._call("GET", f"/v1/transfers/{transfer_id}", schemas.Transfer)

    # ---- vendor verification ----------------------------------------------------------------

    async def verification(
        self, vendor_account_id: uuid.UUID, transfer_id: uuid.UUID, *, min_position: int = 0, wait_ms: int = 0
    ) -> schemas.Verification:
        """Pass the `position` of the transfer as `min_position` to read your own write: the call
        waits up to `wait_ms` for the projection, then raises `projection_behind` (503)."""
        path = f"/v1/vendors/{vendor_account_id}/transfers/{transfer_id}/verification"
        params = {"min_position": min_position, "wait_ms": wait_ms}
        return await self._call("GET", path, schemas.Verification, params=params)

    async def vendor_transfers(
        self, vendor_account_id: uuid.UUID, *, limit: int = 100, after: str = ""
    ) -> AsyncIterator[schemas.VerificationPage]:
        """Every page of the vendor's verified transfers, oldest first, until `next` is null."""
        cursor: str | None = after
        while cursor is not None:
            params = {"limit": limit, "after": cursor}
            page = await self._call(
                "GET", f"/v1/vendors/{vendor_account_id}/transfers", schemas.VerificationPage, params=params
            )
            yield page
            cursor = page.next

    # ---- the journal ------------------------------------------------------------------------

    async def journal(self, *, after: int = 0, limit: int | None = None) -> AsyncIterator[schemas.JournalEntry]:
        """Journal entries with position > `after`, in order, streamed line by line; at most
        `limit` of them, or all of them up to the head when `limit` is None."""
        left = limit
        while left is None or left > 0:
            page_limit = schemas.JOURNAL_LIMIT_MAX if left is None else min(left, schemas.JOURNAL_LIMIT_MAX)
            received = 0
            async for entry in self._journal_page(after, page_limit):
                yield entry
                after, received = entry.position, received + 1
            if received < page_limit:
                return
            left = None if left is None else left - received

    async def _journal_page(self, after: int, limit: int) -> AsyncIterator[schemas.JournalEntry]:
        decoder = _decoder(schemas.JournalEntry)
        params = {"after": after, "limit": limit}
        async with self._session.get(self.base_url + "/v1/journal", params=params, headers=self._headers()) as response:
            await _raise_for_problem(response)
            async for line in response.content:
                if line.strip():
                    yield decoder.decode(line)

    async def journal_head(self) -> schemas.JournalHead:
        return await self._call("GET", "/v1/journal/head", schemas.JournalHead)

    # ---- operations -------------------------------------------------------------------------

    async def health(self) -> schemas.Health:
        return await self._call("GET", "/healthz", schemas.Health)

    async def ready(self) -> schemas.Health:
        """Which dependencies answer; `status` is "ready" or "not_ready" (a 503 is not raised)."""
        async with self._session.get(self.base_url + "/readyz", headers=self._headers()) as response:
            if response.status not in (200, 503):
                await _raise_for_problem(response)
            return _decoder(schemas.Health).decode(await response.read())

    async def openapi(self) -> dict[str, Any]:
        return await self._call("GET", "/openapi.json", dict[str, Any])

    # ---- plumbing ---------------------------------------------------------------------------

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        answer: type[T],
        *,
        body: msgspec.Struct | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> T:
        sent = self._headers(headers)
        data = None
        if body is not None:
            data = schemas.encode(body)
            sent["Content-Type"] = "application/json"
        url = self.base_url + path
        async with self._session.request(method, url, data=data, params=params, headers=sent) as response:
            await _raise_for_problem(response)
            return _decoder(answer).decode(await response.read())


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
