"""An async, typed Python client of the ledger's HTTP API (contract v1).

Answers are decoded into the same msgspec Structs the server encodes them from (`schemas`), so a
field the server adds later is ignored, not an error. Every problem answer (RFC 9457) is raised
as `LedgerProblem` carrying its `status`, stable `code`, `detail` and validation `errors`.

The client retries by itself what the contract says may be retried (429 `rate_limited`, 503
`queue_full`, `unavailable`, `timeout`, a dropped connection), but only where a repeat cannot apply
a request twice: reads, transfers (the same `Idempotency-Key` on every attempt, so a repeat after an
unknown outcome is a replay) and account creation (the client chooses the id, so a repeat is a
replay). Principal creation is not idempotent and is repeated only when the server provably did
not process it. `retry_total_s` and `retry_attempts_max` bound it all; `retry_total_s=0` turns it off.

    async with LedgerClient("http://127.0.0.1:8080", token=admin_token) as ledger:
        transfer = await ledger.transfer(from_account_id=a, to_account_id=b, amount=450,
                                         currency="USD", idempotency_key="order-17")

See docs/client.md.
"""

from __future__ import annotations

import datetime as dt

import asyncio
import hashlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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

    def as_principal(self, token: str) -> LedgerClient:
        return LedgerClient(
            self.base_url, token=token, session=self._session, timeout_s=self._timeout_s,
            retry_total_s=self._retry_total_s, retry_attempts_max=self._retry_attempts_max,
        )

    async def close(self) -> None:
        if self._owns_session:
            await self._session.close()

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- principals and accounts ------------------------------------------------------------

    async def create_principal(self, *, role: schemas.Role, name: str) -> schemas.Principal:
        """The token in the answer is shown once; keep it. Creating a principal is not idempotent
        (a repeat makes a second one), so it is retried only when the server provably did not
        process it: the connection could not be opened, or the rate limiter answered 429."""
        body = schemas.PrincipalCreate(role=role, name=name)
        return await self._call("POST", "/v1/principals", schemas.Principal, body=body, idempotent=False)

    async def create_token(self, principal_id: uuid.UUID) -> schemas.TokenCreated:
        """Another token for the principal (rotation: issue, move over, `revoke_token` the old).
        Not idempotent, so retried only when the server provably did not process it."""
        return await self._call("POST", f"/v1/principals/{principal_id}/tokens", schemas.TokenCreated,
                                idempotent=False)

    async def tokens(self, principal_id: uuid.UUID) -> schemas.TokenList:
        return await self._call("GET", f"/v1/principals/{principal_id}/tokens", schemas.TokenList)

    async def revoke_token(self, principal_id: uuid.UUID, token_id: uuid.UUID) -> None:
        """Refused on every API process within a second; revoking twice is harmless."""
        await self._call("DELETE", f"/v1/principals/{principal_id}/tokens/{token_id}", None)

    async def create_account(
        self,
        *,
        kind: schemas.AccountKind,
        currency: str,
        id: uuid.UUID | None = None,
        owner_id: uuid.UUID | None = None,
        name: str = "",
    ) -> schemas.Account:
        """Idempotent by `id`: the same id with the same kind, currency and owner returns it again.
        Without an `id` the client chooses one (a random UUID, as the contract allows), so that a
        retry after a lost answer returns the same account instead of creating a second one."""
        body = schemas.AccountCreate(kind=kind, currency=currency, id=id or uuid.uuid4(), owner_id=owner_id, name=name)
        return await self._call("POST", "/v1/accounts", schemas.Account, body=body)

    async def get_account(self, account_id: uuid.UUID) -> schemas.Account:
        return await self._call("GET", f"/v1/accounts/{account_id}", schemas.Account)

    async def account(
        self, account_id: uuid.UUID, *, at_position: int | None = None, as_of: dt.datetime | None = None
    ) -> schemas.Account:
        """The account now, or with its balance as it was right after journal position
        `at_position`, or after the last entry committed at or before `as_of` (at most one)."""
        if at_position is not None and as_of is not None:
            raise ValueError("give at most one of at_position and as_of")
        params: dict[str, Any] = {}
        if at_position is not None:
            params["at_position"] = at_position
        if as_of is not None:
            params["as_of"] = as_of.astimezone(dt.timezone.utc).isoformat()
        return await self._call("GET", f"/v1/accounts/{account_id}", schemas.Account, params=params)

    async def accounts(self, *, limit: int = 100, after: str = "") -> AsyncIterator[schemas.AccountPage]:
        """Every page of the caller's accounts (admin, auditor: all), in id order, until `next` is null."""
        cursor: str | None = after
        while cursor is not None:
            page = await self._call("GET", "/v1/accounts", schemas.AccountPage, params={"limit": limit, "after": cursor})
            yield page
            cursor = page.next

    async def statement(
        self, account_id: uuid.UUID, *, limit: int = 100, after: str = "", reference: str | None = None
    ) -> AsyncIterator[schemas.StatementPage]:
        """Every page of the account's statement from the journal, oldest first, until `next` is
        null; only entries with exactly `reference` when given."""
        cursor: str | None = after
        while cursor is not None:
            params: dict[str, Any] = {"limit": limit, "after": cursor}
            if reference is not None:
                params["reference"] = reference
            page = await self._call("GET", f"/v1/accounts/{account_id}/entries", schemas.StatementPage, params=params)
            yield page
            cursor = page.next

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
        """Commit a transfer. Every retry, the client's own and the caller's, sends the same
        `idempotency_key`: the transfer is applied at most once and every repeat answers it."""
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

    async def refund(
        self,
        transfer_id: uuid.UUID,
        *,
        amount: int,
        idempotency_key: str,
        reference: str = "",
        metadata: dict[str, str] | None = None,
    ) -> schemas.Transfer:
        """Refund `amount` of a payment to a vendor account back to its payer (the vendor's owner
        or admin). Retried with the same `idempotency_key`, so it is applied at most once."""
        body = schemas.RefundCreate(amount=amount, reference=reference, metadata=metadata or {})
        headers = {"Idempotency-Key": idempotency_key}
        return await self._call("POST", f"/v1/transfers/{transfer_id}/refunds", schemas.Transfer, body=body,
                                headers=headers)

    async def get_transfer(self, transfer_id: uuid.UUID) -> schemas.Transfer:
        return await self._call("GET", f"/v1/transfers/{transfer_id}", schemas.Transfer)

    # ---- holds ------------------------------------------------------------------------------

    async def create_hold(
        self,
        *,
        from_account_id: uuid.UUID,
        to_account_id: uuid.UUID,
        amount: int,
        currency: str,
        idempotency_key: str,
        reference: str = "",
        metadata: dict[str, str] | None = None,
        expires_in_s: int = schemas.HOLD_EXPIRES_IN_S_DEFAULT,
    ) -> schemas.Hold:
        """Reserve `amount` of a wallet for a vendor until captured, voided or expired (after
        `expires_in_s`). Retried with the same `idempotency_key`, so it is placed at most once."""
        body = schemas.HoldCreate(
            from_account_id=from_account_id, to_account_id=to_account_id, amount=amount, currency=currency,
            reference=reference, metadata=metadata or {}, expires_in_s=expires_in_s,
        )
        return await self._call("POST", "/v1/holds", schemas.Hold, body=body,
                                headers={"Idempotency-Key": idempotency_key})

    async def capture(self, hold_id: uuid.UUID, *, idempotency_key: str, amount: int | None = None) -> schemas.Hold:
        """Pay `amount` of the hold (default: all of it) to its vendor; the rest goes back to the
        wallet. The answer's `transfer_id` is the payment, verified and refunded like a transfer."""
        return await self._call("POST", f"/v1/holds/{hold_id}/capture", schemas.Hold,
                                body=schemas.HoldCapture(amount=amount), headers={"Idempotency-Key": idempotency_key})

    async def void(self, hold_id: uuid.UUID, *, idempotency_key: str) -> schemas.Hold:
        """Release the whole hold back to the wallet."""
        return await self._call("POST", f"/v1/holds/{hold_id}/void", schemas.Hold,
                                headers={"Idempotency-Key": idempotency_key})

    async def get_hold(self, hold_id: uuid.UUID) -> schemas.Hold:
        return await self._call("GET", f"/v1/holds/{hold_id}", schemas.Hold)

    # ---- vendor verification ----------------------------------------------------------------

    async def verification(
        self, vendor_account_id: uuid.UUID, transfer_id: uuid.UUID, *, min_position: int = 0, wait_ms: int = 0
    ) -> schemas.Verification:
        """Pass the `position` of the transfer as `min_position` to read your own write: the call
        waits up to `wait_ms` for the projection, and while it is behind asks again (within the
        retry bounds); then it raises `projection_behind` (503). With `wait_ms=0` the caller asked
        not to wait, so `projection_behind` is raised at once."""
        path = f"/v1/vendors/{vendor_account_id}/transfers/{transfer_id}/verification"
        params = {"min_position": min_position, "wait_ms": wait_ms}
        also = frozenset({"projection_behind"}) if wait_ms > 0 else frozenset()
        return await self._call("GET", path, schemas.Verification, params=params, also_retry=also)

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

    # ---- vendor webhooks ----------------------------------------------------------------------

    async def create_webhook(
        self, vendor_account_id: uuid.UUID, *, url: str, event_types: list[schemas.WebhookEventType] | None = None
    ) -> schemas.WebhookCreated:
        """Register an endpoint; keep `secret` (shown only here) to verify signatures. Not
        idempotent (a repeat registers a second endpoint), so retried only when the server
        provably did not process it."""
        body = schemas.WebhookCreate(url=url, event_types=event_types)
        return await self._call("POST", f"/v1/vendors/{vendor_account_id}/webhooks", schemas.WebhookCreated,
                                body=body, idempotent=False)

    async def webhooks(
        self, vendor_account_id: uuid.UUID, *, limit: int = 100, after: str = ""
    ) -> AsyncIterator[schemas.WebhookPage]:
        """Every page of the vendor's endpoints (without secrets), until `next` is null."""
        cursor: str | None = after
        while cursor is not None:
            page = await self._call("GET", f"/v1/vendors/{vendor_account_id}/webhooks", schemas.WebhookPage,
                                    params={"limit": limit, "after": cursor})
            yield page
            cursor = page.next

    async def delete_webhook(self, vendor_account_id: uuid.UUID, webhook_id: uuid.UUID) -> None:
        """No delivery to the endpoint starts afterwards. A repeat after a lost answer gets 404."""
        await self._call("DELETE", f"/v1/vendors/{vendor_account_id}/webhooks/{webhook_id}", None)

    async def webhook_deliveries(
        self, vendor_account_id: uuid.UUID, webhook_id: uuid.UUID, *, limit: int = 100, after: str = ""
    ) -> AsyncIterator[schemas.WebhookDeliveryPage]:
        """Every page of the endpoint's deliveries, in journal order, until `next` is null."""
        cursor: str | None = after
        while cursor is not None:
            page = await self._call(
                "GET", f"/v1/vendors/{vendor_account_id}/webhooks/{webhook_id}/deliveries", schemas.WebhookDeliveryPage,
                params={"limit": limit, "after": cursor},
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
        """Opening the page is retried; a connection lost in the middle of the stream is raised."""
        decoder = _decoder(schemas.JournalEntry)
        params = {"after": after, "limit": limit}

        async def attempt(timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
            response = await self._session.get(
                self.base_url + "/v1/journal", params=params, headers=self._headers(), timeout=timeout
            )
            try:
                await _raise_for_problem(response)
            except BaseException:
                response.release()
                raise
            return response

        async with await self._retrying(attempt, idempotent=True) as response:
            async for line in response.content:
                if line.strip():
                    yield decoder.decode(line)

    async def journal_head(self) -> schemas.JournalHead:
        return await self._call("GET", "/v1/journal/head", schemas.JournalHead)

    # ---- proofs (docs/proofs.md) -------------------------------------------------------------

    async def tree(self, *, tree_size: int | None = None) -> schemas.TreeHead:
        params = {"tree_size": tree_size} if tree_size is not None else None
        return await self._call("GET", "/v1/journal/tree", schemas.TreeHead, params=params)

    async def inclusion_proof(self, position: int, *, tree_size: int | None = None) -> schemas.InclusionProof:
        params = {"position": position, **({"tree_size": tree_size} if tree_size is not None else {})}
        return await self._call("GET", "/v1/journal/proofs/inclusion", schemas.InclusionProof, params=params)

    async def consistency_proof(self, from_size: int, *, to_size: int | None = None) -> schemas.ConsistencyProof:
        params = {"from_size": from_size, **({"to_size": to_size} if to_size is not None else {})}
        return await self._call("GET", "/v1/journal/proofs/consistency", schemas.ConsistencyProof, params=params)

    async def latest_checkpoint(self) -> schemas.SignedTreeHead:
        return await self._call("GET", "/v1/journal/checkpoints/latest", schemas.SignedTreeHead)

    @staticmethod
    def verify_inclusion(entry_hash: str, proof: schemas.InclusionProof, root_hash: str) -> bool:
        """Pure (no I/O): the entry with this `hash` is leaf `proof.position - 1` of the tree whose
        root is `root_hash` (hex; take it from a tree head whose signature you checked against a
        pinned key). RFC 9162 §2.1.3.2, the leaf being SHA-256(0x00 ‖ bytes.fromhex(entry_hash))."""
        leaf = hashlib.sha256(b"\x00" + bytes.fromhex(entry_hash)).digest()
        if proof.leaf_hash != leaf.hex() or not 1 <= proof.position <= proof.tree_size:
            return False
        fn, sn, digest = proof.position - 1, proof.tree_size - 1, leaf
        for sibling in (bytes.fromhex(h) for h in proof.audit_path):
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                digest = hashlib.sha256(b"\x01" + sibling + digest).digest()
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
            else:
                digest = hashlib.sha256(b"\x01" + digest + sibling).digest()
            fn, sn = fn >> 1, sn >> 1
        return sn == 0 and digest.hex() == root_hash

    # ---- operations -------------------------------------------------------------------------

    async def health(self) -> schemas.Health:
        return await self._call("GET", "/healthz", schemas.Health)

    async def ready(self) -> schemas.Health:
        """Which dependencies answer; `status` is "ready" or "not_ready" (a 503 is not raised)."""

        async def attempt(timeout: aiohttp.ClientTimeout) -> schemas.Health:
            async with self._session.get(self.base_url + "/readyz", headers=self._headers(), timeout=timeout) as response:
                if response.status not in (200, 503):
                    await _raise_for_problem(response)
                return _decoder(schemas.Health).decode(await response.read())

        return await self._retrying(attempt, idempotent=True)

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
