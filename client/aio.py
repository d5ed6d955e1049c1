"""An async, typed Python client of the ledger's HTTP API (contracts v1 to v3).

Answers are decoded into the same msgspec Structs the server encodes them from (`schemas`), so a
field the server adds later is ignored, not an error. Every problem answer (RFC 9457) is raised
as `LedgerProblem` carrying its `status`, stable `code`, `detail` and validation `errors`. The
session and the retries are `client.transport`'s; the proof routes and `verify` are
`client.verifying`'s (docs/proofs.md); `batch` and `batches` are `client.batches`'s (docs/batches.md).

    async with LedgerClient("http://127.0.0.1:8080", token=admin_token) as ledger:
        transfer = await ledger.transfer(from_account_id=a, to_account_id=b, amount=450,
                                         currency="USD", idempotency_key="order-17")

See docs/client.md.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

import schemas
from client.transport import (  # noqa: F401 (the names this module always offered)
    RETRY_ATTEMPTS_MAX_DEFAULT, RETRY_TOTAL_S_DEFAULT, TIMEOUT_S_DEFAULT, LedgerProblem, Transport, _decoder,
    _raise_for_problem,
)
from client.batches import BatchRoutes
from client.verifying import ProofRoutes, Trust


class LedgerClient(BatchRoutes, ProofRoutes, Transport):
    """One principal's view of the API. `as_principal` gives another principal's view over the
    same connection pool (and the same trusted tree head); only the client that created the
    session closes it. `public_key` (hex) is the service's pinned Ed25519 key, which `verify`
    checks tree heads against; `trusted_head` the head an earlier run trusted (its `trusted_head`)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        retry_total_s: float = RETRY_TOTAL_S_DEFAULT,
        retry_attempts_max: int = RETRY_ATTEMPTS_MAX_DEFAULT,
        public_key: str | None = None,
        trusted_head: schemas.SignedTreeHead | None = None,
    ) -> None:
        super().__init__(base_url, token=token, session=session, timeout_s=timeout_s, retry_total_s=retry_total_s,
                         retry_attempts_max=retry_attempts_max)
        self._public_key = public_key
        self._trust = Trust(trusted_head)

    def as_principal(self, token: str) -> LedgerClient:
        view = LedgerClient(self.base_url, token=token, public_key=self._public_key, **self._shared_options())
        view._trust = self._trust
        return view

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
        self, account_id: uuid.UUID, *, limit: int = 100, after: str = "", reference: str | None = None,
        metadata: dict[str, str] | None = None, kind: schemas.SearchKind | None = None,
        since: dt.datetime | None = None, until: dt.datetime | None = None,
    ) -> AsyncIterator[schemas.StatementPage]:
        """Every page of the account's statement from the journal, oldest first, until `next` is
        null; only entries with exactly `reference` when given, and those the search filters keep
        (`_search_params`)."""
        cursor: str | None = after
        while cursor is not None:
            params: dict[str, Any] = {"limit": limit, "after": cursor, **_search_params(metadata, kind, since, until)}
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

    async def transfers(
        self, *, limit: int = 100, after: str = "", account_id: uuid.UUID | None = None,
        metadata: dict[str, str] | None = None, kind: schemas.SearchKind | None = None,
        since: dt.datetime | None = None, until: dt.datetime | None = None,
    ) -> AsyncIterator[schemas.TransferPage]:
        """Every page of the journal's entries (admin, auditor), oldest first, until `next` is
        null: those with a posting on `account_id` when given, and that the search filters keep
        (`_search_params`)."""
        cursor: str | None = after
        while cursor is not None:
            params: dict[str, Any] = {"limit": limit, "after": cursor, **_search_params(metadata, kind, since, until)}
            if account_id is not None:
                params["account_id"] = str(account_id)
            page = await self._call("GET", "/v1/transfers", schemas.TransferPage, params=params)
            yield page
            cursor = page.next

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
        self, vendor_account_id: uuid.UUID, *, limit: int = 100, after: str = "",
        metadata: dict[str, str] | None = None, kind: schemas.SearchKind | None = None,
        since: dt.datetime | None = None, until: dt.datetime | None = None, newest_first: bool = False,
    ) -> AsyncIterator[schemas.VerificationPage]:
        """Every page of the vendor's verified transfers, oldest first (or newest), until `next` is
        null; only those the search filters keep (`_search_params`)."""
        cursor: str | None = after
        while cursor is not None:
            params = {"limit": limit, "after": cursor, **_search_params(metadata, kind, since, until)}
            if newest_first:
                params["order"] = "desc"
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


def _search_params(
    metadata: dict[str, str] | None, kind: str | None, since: dt.datetime | None, until: dt.datetime | None,
) -> dict[str, str]:
    """The search filters as query parameters: `metadata.KEY=VALUE` for each pair of `metadata`
    (up to 4, all must hold), `kind`, and `from`/`to` (`since`/`until`, aware datetimes) on
    `committed_at`."""
    params = {f"metadata.{key}": value for key, value in (metadata or {}).items()}
    if kind is not None:
        params["kind"] = kind
    for name, moment in (("from", since), ("to", until)):
        if moment is not None:
            params[name] = moment.astimezone(dt.timezone.utc).isoformat()
    return params
