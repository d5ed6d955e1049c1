"""Every error the API answers, as RFC 9457 problem details with a stable `code`.

Handlers raise `ApiError(code)`; the one middleware in `api.app` turns it (and anything
unexpected) into `application/problem+json`. The table below is the whole closed set.
"""

from __future__ import annotations

import re

from aiohttp import web

import schemas

PROBLEM_TYPE_BASE = "https://wallet-ledger.dev/problems/"

# code -> (status, title)
CODES: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "Request body is not valid JSON"),
    "validation_error": (400, "Request does not match the schema"),
    "idempotency_key_required": (400, "Idempotency-Key header is required"),
    "invalid_idempotency_key": (400, "Idempotency-Key must be 1..255 printable ASCII characters"),
    "unauthenticated": (401, "Missing, malformed or unknown bearer token"),
    "forbidden": (403, "Not allowed for this principal"),
    "not_found": (404, "No such resource"),
    "method_not_allowed": (405, "Method not allowed on this route"),
    "account_exists": (409, "An account with this id exists with other attributes"),
    "idempotency_key_reused": (409, "Idempotency-Key was used with a different request"),
    "body_too_large": (413, "Request body exceeds 64 KiB (4 MiB for a batch)"),
    "same_account": (422, "Source and destination are the same account"),
    "account_not_found": (422, "An account of the transfer does not exist"),
    "currency_mismatch": (422, "The accounts' currencies differ from the transfer's"),
    "account_closed": (422, "An account of the transfer is closed"),
    "account_frozen": (422, "The source account is frozen"),
    "account_not_empty": (422, "The account has a non-zero balance or pending holds, so it cannot be closed"),
    "insufficient_funds": (422, "The source account cannot afford the transfer (its min_balance)"),
    "balance_limit_exceeded": (422, "The transfer would carry a balance past the account's max_balance or the ledger's range (INT8)"),
    "owner_not_found": (422, "The owner principal does not exist"),
    "not_refundable": (422, "The transfer is a refund or was not paid to a vendor account"),
    "refund_exceeds_transfer": (422, "The refunds of the transfer would add up to more than its amount"),
    "batch_aborted": (424, "Another item of the atomic batch failed, so none of it was written"),
    "rate_limited": (429, "Too many requests for this principal or client address"),
    "internal_error": (500, "Internal error"),
    "queue_full": (503, "The commit queue is full"),
    "unavailable": (503, "A dependency is unavailable"),
    "timeout": (503, "The request did not finish in time"),
    "projection_behind": (503, "The projection has not reached the requested position"),
    "too_many_waiters": (503, "Too many requests are waiting for the projection in this process"),
    "tree_size_out_of_range": (422, "A tree size is past the journal head (or from_size past to_size)"),
    "position_out_of_range": (422, "The position is past the journal head or the asked tree size"),
    "tree_behind": (503, "The Merkle tree is too far behind the journal to answer now"),
    "webhook_url_not_allowed": (422, "The webhook URL is not http(s) or resolves to a loopback, private or link-local address"),
    "too_many_webhooks": (422, "The vendor account has as many webhook endpoints as it may"),
    "hold_not_pending": (422, "The hold is already captured, voided or expired"),
    "hold_expired": (422, "The hold expired before the capture"),
    "capture_exceeds_hold": (422, "The capture is more than the hold"),
}

RETRY_AFTER_S = {"queue_full": 1, "unavailable": 1, "timeout": 1, "projection_behind": 1, "rate_limited": 1,
                "too_many_waiters": 1, "tree_behind": 1}


class ApiError(Exception):
    def __init__(
        self,
        code: str,
        detail: str | None = None,
        *,
        errors: list[schemas.ValidationIssue] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        assert code in CODES, f"undocumented problem code {code}"
        super().__init__(code)
        self.code = code
        self.status, self.title = CODES[code]
        self.detail = detail or self.title
        self.errors = errors
        self.retry_after_s = retry_after_s if retry_after_s is not None else RETRY_AFTER_S.get(code)


def problem_body(error: ApiError) -> schemas.Problem:
    """The problem as a body: a response's, or a batch item's answer."""
    return schemas.Problem(
        type=PROBLEM_TYPE_BASE + error.code,
        title=error.title,
        status=error.status,
        detail=error.detail,
        code=error.code,
        errors=error.errors,
    )


def problem_response(error: ApiError) -> web.Response:
    body = problem_body(error)
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    return web.Response(
        body=schemas.encode(body), status=error.status, content_type="application/problem+json", headers=headers
    )


# msgspec ends a message with `- at `$.amount``, or `- at `key` in `$.metadata`` for a dict key.
_PATH_IN_MESSAGE = re.compile(r" - at (`key` in )?`(\$[^`]*)`$")


def from_validation(message: str, *, root: str = "$") -> ApiError:
    """msgspec says `Expected int >= 1 - at $.amount`; split the path out for `errors[]`."""
    match = _PATH_IN_MESSAGE.search(message)
    path = match.group(2) if match else "$"
    text = message[: match.start()] if match else message
    if match and match.group(1):
        text += " (in a key)"
    if root != "$":
        path = root + path[1:]
    return ApiError(
        "validation_error", f"{text} at {path}", errors=[schemas.ValidationIssue(path=path, message=text)]
    )
