"""Every SQL statement of vendor webhooks, in the PostgreSQL/CockroachDB subset.

Apart from `ledger.store` (the journal's) as `projector.store` is apart for the read models: one
module per kind of I/O. The API registers and lists endpoints and reads deliveries; the webhook
worker (`webhooks.worker`, role `ledger_webhooks`) writes delivery rows together with its
cursor (its row in `webhook_checkpoint`), claims due rows with a lease (`FOR UPDATE SKIP
LOCKED`, which CockroachDB has since 23.1) and records each attempt. Driver errors are translated by the pool (`ledger.db`).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass

import psycopg
from psycopg.rows import args_row, class_row, kwargs_row

import schemas
from ledger import store
from ledger.dialect import is_retryable
from ledger.store import WEBHOOKS_ROLE
from webhooks.events import Event

__all__ = ["WEBHOOKS_ROLE"]


@dataclass(frozen=True, slots=True)
class EndpointRow:
    id: uuid.UUID
    vendor_account_id: uuid.UUID
    url: str
    event_types: list[str]
    secret_encrypted: str
    created_at: dt.datetime


# ---- endpoints (the API) --------------------------------------------------------------------


# Registrations racing for a vendor's last places are serialized by the database: the loser of
# each conflict runs again and counts the winner. A vendor's registrations rarely collide more.
ENDPOINT_INSERT_ATTEMPTS_MAX = 16


async def insert_endpoint(conn, *, endpoint_id: uuid.UUID, vendor_account_id: uuid.UUID, url: str,
                          event_types: list[str], secret_encrypted: str, live_max: int) -> dt.datetime | None:
    """Register the endpoint unless the vendor has `live_max` live ones already (then None).

    Under READ COMMITTED two registrations could both count `live_max - 1` and both insert; the
    count and the insert run SERIALIZABLE instead (the API's role may not lock the vendor's
    account row), and the one that loses the conflict (40001) counts again."""
    fields = dict(endpoint_id=endpoint_id, vendor_account_id=vendor_account_id, url=url, event_types=event_types,
                  secret_encrypted=secret_encrypted, live_max=live_max)
    for _ in range(ENDPOINT_INSERT_ATTEMPTS_MAX - 1):
        try:
            return await _insert_endpoint_once(conn, **fields)
        except psycopg.Error as error:
            if not is_retryable(error):
                raise
    return await _insert_endpoint_once(conn, **fields)  # a last conflict reaches the pool: a Conflict, 503


async def _insert_endpoint_once(conn, *, endpoint_id: uuid.UUID, vendor_account_id: uuid.UUID, url: str,
                                event_types: list[str], secret_encrypted: str, live_max: int) -> dt.datetime | None:
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        row = await (await conn.execute(
            "SELECT count(*) FROM webhook_endpoints WHERE vendor_account_id = %s AND deleted_at IS NULL",
            (vendor_account_id,),
        )).fetchone()
        if row[0] >= live_max:
            return None
        row = await (await conn.execute(
            "INSERT INTO webhook_endpoints (id, vendor_account_id, url, event_types, secret_encrypted)"
            " VALUES (%s, %s, %s, %s::JSONB, %s) RETURNING created_at",
            (endpoint_id, vendor_account_id, url, json.dumps(event_types), secret_encrypted),
        )).fetchone()
    return row[0]


_WEBHOOK = "SELECT id, url, event_types, created_at FROM webhook_endpoints"


async def endpoints_page(conn, vendor_account_id: uuid.UUID, *, after: int, limit: int) -> list[tuple[int, schemas.Webhook]]:
    """Live endpoints of the vendor in registration order, each with its cursor. The cursor counts
    every endpoint the vendor ever registered (deleted ones too, which keep their row), so it is
    stable while endpoints come and go."""
    rows = await (await conn.execute(
        "SELECT n, id, url, event_types, created_at FROM (SELECT row_number() OVER (ORDER BY created_at, id) AS n,"
        " id, url, event_types, created_at, deleted_at FROM webhook_endpoints WHERE vendor_account_id = %s) e"
        " WHERE n > %s AND deleted_at IS NULL ORDER BY n LIMIT %s",
        (vendor_account_id, after, limit),
    )).fetchall()
    return [(n, schemas.Webhook(id=i, url=u, event_types=t, created_at=c)) for n, i, u, t, c in rows]


async def live_endpoint_exists(conn, vendor_account_id: uuid.UUID, endpoint_id: uuid.UUID) -> bool:
    row = await (await conn.execute(
        "SELECT 1 FROM webhook_endpoints WHERE id = %s AND vendor_account_id = %s AND deleted_at IS NULL",
        (endpoint_id, vendor_account_id),
    )).fetchone()
    return row is not None


async def delete_endpoint(conn, vendor_account_id: uuid.UUID, endpoint_id: uuid.UUID) -> bool:
    """Mark the endpoint deleted (its rows stay, for the record); False when there is no live one.
    Senders claim only rows of live endpoints, so no delivery starts after this commits."""
    cursor = await conn.execute(
        "UPDATE webhook_endpoints SET deleted_at = now() WHERE id = %s AND vendor_account_id = %s"
        " AND deleted_at IS NULL",
        (endpoint_id, vendor_account_id),
    )
    return cursor.rowcount == 1


async def deliveries_page(conn, endpoint_id: uuid.UUID, *, after: int, limit: int) -> list[tuple[int, schemas.WebhookDelivery]]:
    """The endpoint's deliveries in journal order (by `event_seq`, the cursor)."""
    async with conn.cursor(row_factory=kwargs_row(_delivery)) as cursor:
        await cursor.execute(
            "SELECT event_seq, event_id, type, position, attempts, status, last_status_code,"
            " CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at"
            " FROM webhook_deliveries WHERE endpoint_id = %s AND event_seq > %s ORDER BY event_seq LIMIT %s",
            (endpoint_id, after, limit),
        )
        return await cursor.fetchall()


def _delivery(event_seq: int, **columns) -> tuple[int, schemas.WebhookDelivery]:
    return event_seq, schemas.WebhookDelivery(**columns)


# ---- the worker: the outbox of deliveries ---------------------------------------------------


async def start_cursor(conn, name: str, *, margin_s: float) -> int:
    """The mapper's cursor, created on its first start where following the journal must
    begin: at the journal head when no live endpoint exists (nothing before it is anyone's event),
    else just before the earliest live endpoint was registered (less `margin_s`, for the clocks of
    the API processes that stamp entries). A new deployment never reads the whole journal."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO webhook_checkpoint (name, position)"
            " SELECT %s, coalesce((SELECT j.position FROM journal j WHERE j.committed_at <"
            "  (SELECT min(created_at) FROM webhook_endpoints WHERE deleted_at IS NULL) - %s * INTERVAL '1 second'"
            "  ORDER BY j.position DESC LIMIT 1),"
            "  CASE WHEN EXISTS (SELECT 1 FROM webhook_endpoints WHERE deleted_at IS NULL) THEN 0 END,"
            "  (SELECT position FROM journal_head WHERE id = 1))"
            " ON CONFLICT (name) DO NOTHING",
            (name, margin_s),
        )
        return await cursor(conn, name)


async def lock_cursor(conn, name: str) -> int:
    """The mapper's cursor (`start_cursor` made it), locked until the transaction ends,
    so two workers take turns and no entry is mapped twice."""
    row = await (await conn.execute("SELECT position FROM webhook_checkpoint WHERE name = %s FOR UPDATE", (name,))).fetchone()
    return row[0]


async def cursor(conn, name: str) -> int:
    row = await (await conn.execute("SELECT position FROM webhook_checkpoint WHERE name = %s", (name,))).fetchone()
    return row[0] if row else 0


_ENDPOINT_COLUMNS = "id, vendor_account_id, url, event_types, secret_encrypted, created_at"


@dataclass(frozen=True, slots=True)
class Subscription:
    """What the mapper needs of a live endpoint: whose events, which types."""

    id: uuid.UUID
    vendor_account_id: uuid.UUID
    event_types: list[str]


async def live_endpoints_of(conn, vendor_account_ids: list[uuid.UUID]) -> list[Subscription]:
    """The live endpoints of these accounts. The ids go in binary: a page names up to two
    thousand accounts, and the text form formats every UUID."""
    return await store.fetch_all(conn, class_row(Subscription), "SELECT id, vendor_account_id, event_types"
                                 " FROM webhook_endpoints WHERE vendor_account_id = ANY(%b::UUID[])"
                                 " AND deleted_at IS NULL", (vendor_account_ids,))


async def insert_deliveries(conn, rows: list[tuple[uuid.UUID, Event]], *, leased: list[bool], lease_s: float) -> None:
    """One row per (endpoint, event): due at once, or, where `leased`, leased for `lease_s` to the
    worker writing it (it attempts them itself once this commits). A repeat (a re-mapped range)
    changes nothing. The arrays go in binary (`%b`): the text form escapes every quote of every
    JSON body."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, event_seq, event_id, type, position, payload, committed_at,"
        " next_attempt_at) SELECT e, s, i, t, p, b, c::TIMESTAMPTZ, now() + l * INTERVAL '1 second'"
        " FROM unnest(%b::UUID[], %b::INT8[], %b::UUID[], %b::TEXT[], %b::INT8[], %b::TEXT[], %b::TEXT[], %b::FLOAT8[])"
        " AS d (e, s, i, t, p, b, c, l) ON CONFLICT (endpoint_id, event_seq) DO NOTHING",
        (
            [endpoint for endpoint, _ in rows],
            [event.seq for _, event in rows],
            [event.id for _, event in rows],
            [event.type for _, event in rows],
            [event.position for _, event in rows],
            [event.body.decode() for _, event in rows],
            [event.committed_at for _, event in rows],
            [lease_s if taken else 0.0 for taken in leased],
        ),
    )


async def move_cursor(conn, name: str, position: int) -> None:
    await conn.execute(
        "UPDATE webhook_checkpoint SET position = %s, updated_at = now() WHERE name = %s", (position, name)
    )


# ---- the worker: senders --------------------------------------------------------------------


# Compared and hashed as an object (eq=False): each is one attempt, and the sender keys the task
# that makes it by it.
@dataclass(frozen=True, slots=True, eq=False)
class Claimed:
    endpoint_id: uuid.UUID
    event_seq: int
    event_id: uuid.UUID
    payload: bytes  # the body as sent, UTF-8 JSON
    attempts: int  # made before this one
    committed_at: dt.datetime
    vendor_id: uuid.UUID | None = None  # the endpoint's vendor: the sender shares its slots fairly by it


def _claimed_row(endpoint_id: uuid.UUID, event_seq: int, event_id: uuid.UUID, payload: str, attempts: int,
                 committed_at: dt.datetime, vendor_id: uuid.UUID) -> Claimed:
    return Claimed(endpoint_id, event_seq, event_id, payload.encode(), attempts, committed_at, vendor_id)


@dataclass(frozen=True, slots=True)
class Room:
    """What one claim may take: `total` rows in all; of each endpoint its room in `endpoints`
    (`endpoint_max` for one not named); of each vendor as many as bring what it holds, from
    `vendors_held` (0 for one not named), up to `vendor_max`."""

    total: int
    endpoints: dict[uuid.UUID, int]
    endpoint_max: int
    vendors_held: dict[uuid.UUID, int]
    vendor_max: int


# Each live endpoint's oldest due rows within its room (one index probe, `webhook_deliveries_due`),
# ranked by how many rows their vendor would then hold: the vendors holding fewest go first (a
# round-robin over vendors), and each vendor's oldest rows first within that. The chosen rows are
# updated by their key alone: they are pending and locked by this statement's own FOR UPDATE, and
# a test of `d.status` there let the planner read them through the partial index of pending rows,
# which with statistics from a mostly settled table it did once per chosen row (a generic plan
# compared 660,352 rows to claim 128: 256 ms a claim in a churn, 8 ms without the test).
_CLAIM = (
    "UPDATE webhook_deliveries d SET next_attempt_at = now() + %s * INTERVAL '1 second'"
    " FROM (SELECT endpoint_id, event_seq, vendor_id FROM"
    "  (SELECT q.endpoint_id, q.event_seq, q.next_attempt_at, e.vendor_account_id AS vendor_id,"
    "   coalesce(v.held, 0) + row_number() OVER (PARTITION BY e.vendor_account_id ORDER BY q.next_attempt_at) AS holds"
    "   FROM webhook_endpoints e"
    "   LEFT JOIN unnest(%b::UUID[], %b::INT8[]) AS r (id, room) ON r.id = e.id"
    "   LEFT JOIN unnest(%b::UUID[], %b::INT8[]) AS v (id, held) ON v.id = e.vendor_account_id"
    "   CROSS JOIN LATERAL (SELECT endpoint_id, event_seq, next_attempt_at FROM webhook_deliveries"
    "    WHERE endpoint_id = e.id AND status = 'pending' AND next_attempt_at <= now()"
    "    ORDER BY next_attempt_at LIMIT coalesce(r.room, %s) FOR UPDATE SKIP LOCKED) q"
    "   WHERE e.deleted_at IS NULL) ranked"
    "  WHERE holds <= %s ORDER BY holds, next_attempt_at LIMIT %s) due"
    " WHERE d.endpoint_id = due.endpoint_id AND d.event_seq = due.event_seq"
    " RETURNING d.endpoint_id, d.event_seq, d.event_id, d.payload, d.attempts, d.committed_at, due.vendor_id"
)


async def claim_due(conn, room: Room, *, lease_s: float) -> list[Claimed]:
    """Take due pending rows within `room`, oldest first within each vendor, the vendors holding
    fewest first, so that neither one endpoint's nor one vendor's backlog crowds out the others.
    They are leased: `next_attempt_at` moves `lease_s` ahead, so a worker that dies mid-attempt
    leaves each row to be retried once its lease ends, never lost. Rows another worker holds
    locked are skipped, not waited for. Returned in journal order (`event_seq`).

    One statement, so its own transaction on the pool's autocommit connections: no BEGIN and
    COMMIT round trips around it (under a backlog a claim runs every `CLAIM_INTERVAL_S`)."""
    async with conn.cursor(row_factory=args_row(_claimed_row)) as cursor:
        await cursor.execute(_CLAIM, (
            lease_s, list(room.endpoints), list(room.endpoints.values()), list(room.vendors_held),
            list(room.vendors_held.values()), room.endpoint_max, room.vendor_max, room.total,
        ))
        claimed = await cursor.fetchall()
    return sorted(claimed, key=lambda row: row.event_seq)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one attempt: `delivered`, `failed`, or `pending` again in `retry_in_s`."""

    claimed: Claimed
    status: str
    status_code: int | None
    error: str | None
    retry_in_s: float | None


async def record_attempts(conn, attempts: list[Attempt]) -> None:
    """Count each attempt and its outcome, all in one statement. The arrays go in binary (`%b`),
    as the mapper's do: the text form formats every UUID and number.

    The rows are also named by `= ANY` on each key column, which the primary key's index answers
    whatever the join: PostgreSQL planned the join alone as a hash join over a sequential scan of
    the whole table once a batch was large beside it (500 rows against 20,000 to a few hundred
    thousand), and under the hot-vendor load, with the table's dead versions, each such batch took
    about 120 ms of the server's time.

    Only pending rows are written (a row settled meanwhile, by another worker after this one's
    lease ended, stays as it is), tested as `d.status = o.was`, `was` always 'pending': a join
    clause, where `d.status = 'pending'` would be estimated as a filter on the table, which nearly
    every row fails (most are settled), so PostgreSQL expected one row from the key lookup and
    compared it with every outcome in a nested loop, each of the batch's rows with each (in a churn
    of 128-row batches, 21 ms a call against 5.6 without the test)."""
    endpoint_ids = [a.claimed.endpoint_id for a in attempts]
    event_seqs = [a.claimed.event_seq for a in attempts]
    await conn.execute(
        "UPDATE webhook_deliveries d SET attempts = d.attempts + 1, status = o.status, last_status_code = o.code,"
        " last_error = o.error, next_attempt_at = CASE WHEN o.retry_s IS NULL THEN d.next_attempt_at"
        "  ELSE now() + o.retry_s * INTERVAL '1 second' END,"
        " delivered_at = CASE WHEN o.status = 'delivered' THEN now() END"
        " FROM unnest(%b::UUID[], %b::INT8[], %b::TEXT[], %b::INT8[], %b::TEXT[], %b::FLOAT8[], %b::TEXT[])"
        "  AS o (endpoint_id, event_seq, status, code, error, retry_s, was)"
        " WHERE d.endpoint_id = ANY(%b::UUID[]) AND d.event_seq = ANY(%b::INT8[])"
        "  AND d.endpoint_id = o.endpoint_id AND d.event_seq = o.event_seq AND d.status = o.was",
        (
            endpoint_ids,
            event_seqs,
            [a.status for a in attempts],
            [a.status_code for a in attempts],
            [a.error for a in attempts],
            # FLOAT8[]: a list that mixed ints and floats could not be sent at all (psycopg DataError)
            [None if a.retry_in_s is None else float(a.retry_in_s) for a in attempts],
            ["pending"] * len(attempts),
            list(set(endpoint_ids)),
            event_seqs,
        ),
    )


async def endpoints_version(conn) -> tuple:
    """Changes whenever an endpoint is registered or deleted (rows are never removed, a delete
    sets `deleted_at`): a cheap test of whether the worker's cache is still right."""
    row = await (await conn.execute(
        "SELECT count(*), max(created_at), max(deleted_at), count(deleted_at) FROM webhook_endpoints"
    )).fetchone()
    return tuple(row)


async def live_among(conn, endpoint_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await (await conn.execute(
        "SELECT id FROM webhook_endpoints WHERE id = ANY(%s) AND deleted_at IS NULL", (endpoint_ids,)
    )).fetchall()
    return {row[0] for row in rows}


async def endpoint(conn, endpoint_id: uuid.UUID) -> EndpointRow | None:
    return await store.fetch_one(conn, class_row(EndpointRow), f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints"
                                 " WHERE id = %s AND deleted_at IS NULL", (endpoint_id,))


async def oldest_undelivered(conn) -> dt.datetime | None:
    """The commit time of the oldest event still pending for a live endpoint (for the age gauge)."""
    row = await (await conn.execute(
        "SELECT min(d.committed_at) FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
        " WHERE d.status = 'pending' AND e.deleted_at IS NULL"
    )).fetchone()
    return row[0]


async def delete_settled(conn, *, older_than_s: float, limit: int) -> int:
    """Delete at most `limit` delivered or failed rows created more than `older_than_s` ago, oldest
    first (index `webhook_deliveries_settled`); how many. Pending rows are never deleted."""
    cursor = await conn.execute(
        "DELETE FROM webhook_deliveries WHERE (endpoint_id, event_seq) IN (SELECT endpoint_id, event_seq"
        " FROM webhook_deliveries WHERE status IN ('delivered', 'failed')"
        " AND created_at < now() - %s * INTERVAL '1 second' ORDER BY created_at LIMIT %s)",
        (older_than_s, limit),
    )
    return cursor.rowcount


async def delete_of_deleted_endpoints(conn, *, older_than_s: float, limit: int) -> int:
    """Delete at most `limit` rows, pending ones too, of endpoints deleted more than `older_than_s`
    ago: nothing attempts them any more (claims take only live endpoints), and they would stay
    forever; how many."""
    cursor = await conn.execute(
        "DELETE FROM webhook_deliveries WHERE (endpoint_id, event_seq) IN (SELECT d.endpoint_id, d.event_seq"
        " FROM webhook_endpoints e JOIN webhook_deliveries d ON d.endpoint_id = e.id"
        " WHERE e.deleted_at < now() - %s * INTERVAL '1 second' LIMIT %s)",
        (older_than_s, limit),
    )
    return cursor.rowcount


# ---- key rotation ---------------------------------------------------------------------------


async def all_secrets(conn) -> list[tuple[uuid.UUID, str]]:
    rows = await (await conn.execute("SELECT id, secret_encrypted FROM webhook_endpoints ORDER BY id")).fetchall()
    return [(row[0], row[1]) for row in rows]


async def replace_secret(conn, endpoint_id: uuid.UUID, *, old: str, new: str) -> None:
    await conn.execute(
        "UPDATE webhook_endpoints SET secret_encrypted = %s WHERE id = %s AND secret_encrypted = %s",
        (new, endpoint_id, old),
    )
