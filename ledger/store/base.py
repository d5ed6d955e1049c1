"""Roles, their grants, the store's errors and the few helpers every SQL module shares.

Driver errors are translated once, into the small set the service knows (`StoreUnavailable`,
`Conflict`, both `StoreError`s) by `translate`, which the pool of `ledger.db` applies to
everything done on its connections; nothing above imports psycopg's error classes.
"""

from __future__ import annotations

import msgspec
import psycopg

API_ROLE = "ledger_api"
PROJECTOR_ROLE = "ledger_projector"
AUDITOR_ROLE = "ledger_auditor"
WEBHOOKS_ROLE = "ledger_webhooks"

# Tables nobody but the migration role may UPDATE or DELETE: the journal is append-only.
JOURNAL_TABLES = ("journal", "postings")

GRANTS: dict[str, dict[str, str]] = {
    API_ROLE: {
        "principals": "SELECT, INSERT",
        "tokens": "SELECT, INSERT, UPDATE",
        "accounts": "SELECT, INSERT, UPDATE",  # UPDATE: controls, changed only with an account entry
        "balances": "SELECT, INSERT, UPDATE",
        "journal": "SELECT, INSERT",
        "postings": "SELECT, INSERT",
        "journal_head": "SELECT, UPDATE",
        "idempotency": "SELECT, INSERT, DELETE",
        "publish_cursor": "SELECT, UPDATE",
        "refund_totals": "SELECT, INSERT, UPDATE",
        "holds": "SELECT, INSERT, UPDATE",
        "projector_checkpoint": "SELECT",
        "projected_balances": "SELECT",
        "verifications": "SELECT",
        "signed_checkpoints": "SELECT",
        "merkle_nodes": "SELECT",
        "merkle_state": "SELECT",
        "signed_tree_heads": "SELECT",
        "webhook_endpoints": "SELECT, INSERT, UPDATE",
        "webhook_deliveries": "SELECT",
    },
    PROJECTOR_ROLE: {
        "accounts": "SELECT",
        "journal": "SELECT",
        "postings": "SELECT",
        "journal_head": "SELECT",
        "projector_checkpoint": "SELECT, INSERT, UPDATE, DELETE",
        "projected_balances": "SELECT, INSERT, UPDATE, DELETE",
        "verifications": "SELECT, INSERT, UPDATE, DELETE",
        "merkle_nodes": "SELECT, INSERT, DELETE",
        "merkle_state": "SELECT, UPDATE",
        "signed_tree_heads": "SELECT, INSERT",
    },
    AUDITOR_ROLE: {
        "accounts": "SELECT",
        "balances": "SELECT",
        "journal": "SELECT",
        "postings": "SELECT",
        "journal_head": "SELECT",
        "refund_totals": "SELECT",
        "holds": "SELECT",
        "projector_checkpoint": "SELECT",
        "projected_balances": "SELECT",
        "verifications": "SELECT",
        "signed_checkpoints": "SELECT, INSERT",
        "merkle_nodes": "SELECT",
        "merkle_state": "SELECT",
        "signed_tree_heads": "SELECT, INSERT",
    },
    # The webhook worker (`ledger webhooks`): reads the journal, writes only its own tables.
    WEBHOOKS_ROLE: {
        "accounts": "SELECT",
        "journal": "SELECT",
        "postings": "SELECT",
        "journal_head": "SELECT",
        "webhook_endpoints": "SELECT, UPDATE",
        "webhook_deliveries": "SELECT, INSERT, UPDATE, DELETE",
        "webhook_checkpoint": "SELECT, INSERT, UPDATE",
    },
}


class StoreError(Exception):
    """A failure of the database, not of the request."""


class StoreUnavailable(StoreError):
    """The database could not be reached, or failed or timed out mid-way. A write in flight may or
    may not have committed (the COMMIT may have been lost): only a retry with its key tells."""


class Conflict(StoreError):
    """A retryable conflict (serialization failure, deadlock, lock timeout): nothing was written,
    and the same transaction run again may succeed."""


def translate(error: BaseException) -> StoreError | None:
    """The service's error for a driver error, or None for one that is a bug, not an outage (a
    syntax or constraint error: those stay as they are and surface as a 500)."""
    from ledger.dialect import is_retryable

    if isinstance(error, psycopg.Error) and is_retryable(error):
        return Conflict(str(error).strip())
    if isinstance(error, psycopg.OperationalError):  # includes psycopg_pool.PoolTimeout
        return StoreUnavailable(str(error).strip())
    return None


async def fetch_one(conn, row_factory, query: str, params: tuple = ()):
    async with conn.cursor(row_factory=row_factory) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()


async def fetch_all(conn, row_factory, query: str, params) -> list:
    async with conn.cursor(row_factory=row_factory) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchall()


_encode_json = msgspec.json.Encoder().encode


def _numbers(values) -> str:
    """An array literal of numbers, UUIDs, hex digests or kinds, None as SQL NULL. psycopg adapts a
    Python list element by element in Python, which cost about a tenth of the API's CPU under
    load; one string that the server casts (`%s::UUID[]`) costs almost nothing and both databases
    accept it. msgspec writes it in C (`str()` of a UUID in Python was another 3%): for these
    values JSON's spelling is the literal's (numbers bare, strings double-quoted with nothing to
    escape, null). Text that may hold a backslash or a control character goes through `_texts`."""
    return "{" + _encode_json(values)[1:-1].decode() + "}"


def _texts(values) -> str:
    """An array literal of arbitrary text: every element quoted, backslashes and quotes escaped."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


