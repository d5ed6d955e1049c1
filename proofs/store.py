"""Every SQL statement of the Merkle tree and the signed tree heads (migration 0006).

Kept apart from `ledger.store` (the journal's statements) because the tree is derived data with
its own follower; the same subset of PostgreSQL and CockroachDB, and the same rule: nothing
above this module writes SQL. Driver errors are translated by the pool, as for the journal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

from ledger import domain
from proofs.merkle import Key, key_end
from schemas import SignedTreeHead

# Nodes the audit's server-side cursor fetches per round trip.
NODE_FETCH_ROWS = 10_000


async def tree_size(conn) -> int:
    row = await (await conn.execute("SELECT tree_size FROM merkle_state WHERE id = 1")).fetchone()
    return row[0] if row else 0


async def entries_behind(conn) -> int:
    """How many journal entries the stored tree lacks (one statement, no lock)."""
    row = await (await conn.execute(
        "SELECT (SELECT position FROM journal_head WHERE id = 1) - (SELECT tree_size FROM merkle_state WHERE id = 1)")).fetchone()
    return row[0] or 0


async def repeatable_read(conn) -> None:
    """First in a transaction: all its reads see one snapshot (a tree head is checked and signed
    over the same tree)."""
    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


async def lock_cursor(conn) -> int:
    """Inside a transaction: the tree follower's cursor, the stored size, locked until commit (one
    follower appends at a time)."""
    row = await (await conn.execute("SELECT tree_size FROM merkle_state WHERE id = 1 FOR UPDATE")).fetchone()
    return row[0]


async def move_cursor(conn, size: int) -> None:
    """The tree follower's cursor: the tree now holds the first `size` entries."""
    await conn.execute("UPDATE merkle_state SET tree_size = %s, updated_at = now() WHERE id = 1", (size,))


async def journal_hashes(conn, *, after: int, until: int | None = None, limit: int) -> list[tuple[int, str]]:
    """(position, hash) of the entries after `after` (up to `until`), in order, at most `limit`."""
    if until is None:
        query, params = "SELECT position, hash FROM journal WHERE position > %s ORDER BY position LIMIT %s", (after, limit)
    else:
        query = "SELECT position, hash FROM journal WHERE position > %s AND position <= %s ORDER BY position LIMIT %s"
        params = (after, until, limit)
    return [tuple(row) for row in await (await conn.execute(query, params)).fetchall()]


async def journal_hashes_at(conn, positions: list[int]) -> list[tuple[int, str]]:
    """(position, hash) of the entries at `positions` (the blocks a proof hashes), in one statement."""
    rows = await (
        await conn.execute("SELECT position, hash FROM journal WHERE position = ANY(%s)", (positions,))
    ).fetchall()
    return [tuple(row) for row in rows]


async def journal_hash_at(conn, position: int) -> str | None:
    row = await (await conn.execute("SELECT hash FROM journal WHERE position = %s", (position,))).fetchone()
    return row[0] if row else None


async def nodes(conn, keys: Iterable[Key]) -> dict[Key, bytes]:
    """The stored subtrees among `keys`, in one statement (a proof needs O(log n) of them)."""
    wanted = sorted(keys)
    if not wanted:
        return {}
    rows = await (
        await conn.execute(
            "SELECT n.level, n.node_index, n.hash FROM merkle_nodes n"
            " JOIN unnest(%s::INT8[], %s::INT8[]) AS k (level, node_index)"
            " ON n.level = k.level AND n.node_index = k.node_index",
            ([k[0] for k in wanted], [k[1] for k in wanted]),
        )
    ).fetchall()
    return {(level, index): bytes(digest) for level, index, digest in rows}


async def insert_nodes(conn, completed: list[tuple[Key, bytes]]) -> None:
    async with conn.cursor() as cursor:
        async with cursor.copy("COPY merkle_nodes (level, node_index, complete_at, hash) FROM STDIN WITH BINARY") as copy:
            copy.set_types(["int8", "int8", "int8", "bytea"])
            for key, digest in completed:
                await copy.write_row((key[0], key[1], key_end(key), digest))


async def reset_tree(conn) -> None:
    """Forget the derived tree (the rebuild then replays it from the journal)."""
    await conn.execute("DELETE FROM merkle_nodes")
    await move_cursor(conn, 0)


async def stream_nodes(conn, *, after: int, upto: int) -> AsyncIterator[tuple[int, Key, bytes]]:
    """(complete_at, key, hash) of the nodes completed by leaves after `after` up to `upto`, in the
    order a replay completes them: by tree size, then level."""
    async with conn.cursor(name="audit_merkle_nodes", binary=True) as cursor:
        await cursor.execute(
            "SELECT complete_at, level, node_index, hash FROM merkle_nodes"
            " WHERE complete_at > %s AND complete_at <= %s ORDER BY complete_at, level",
            (after, upto),
        )
        while rows := await cursor.fetchmany(NODE_FETCH_ROWS):
            for complete_at, level, index, digest in rows:
                yield complete_at, (level, index), bytes(digest)


async def nodes_beyond(conn, size: int) -> int | None:
    """The smallest `complete_at` of a stored node past the stored tree size (there should be none)."""
    row = await (await conn.execute("SELECT min(complete_at) FROM merkle_nodes WHERE complete_at > %s", (size,))).fetchone()
    return row[0]


async def insert_tree_head(
    conn, *, tree_size: int, root_hash: str, digest: str, public_key: str, signature: str, signed_at: dt.datetime
) -> bool:
    """Keep the first signature of a size; returns whether this one was stored."""
    cursor = await conn.execute(
        "INSERT INTO signed_tree_heads (tree_size, root_hash, hash, public_key, signature, signed_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tree_size) DO NOTHING",
        (tree_size, root_hash, digest, public_key, signature, signed_at),
    )
    return cursor.rowcount == 1


# The columns are named as the wire shape's fields, in its order, so a row is read straight into it.
_HEAD_COLUMNS = ", ".join(SignedTreeHead.__struct_fields__)


def _signed_tree_head(cursor) -> Callable[[Sequence], SignedTreeHead]:
    """A psycopg row factory: the row as the wire shape, `signed_at` as the signed text (the
    journal's timestamp form, `domain.format_timestamp`), not the stored TIMESTAMPTZ."""
    signed_at = [column.name for column in cursor.description].index("signed_at")

    def make(values: Sequence) -> SignedTreeHead:
        row = list(values)
        row[signed_at] = domain.format_timestamp(row[signed_at])
        return SignedTreeHead(*row)

    return make


async def latest_tree_head(conn) -> SignedTreeHead | None:
    async with conn.cursor(row_factory=_signed_tree_head) as cursor:
        await cursor.execute(f"SELECT {_HEAD_COLUMNS} FROM signed_tree_heads ORDER BY tree_size DESC LIMIT 1")
        return await cursor.fetchone()


async def tree_heads(conn) -> list[SignedTreeHead]:
    """Every signed tree head, smallest first (the audit checks each; one row per signing)."""
    async with conn.cursor(row_factory=_signed_tree_head) as cursor:
        await cursor.execute(f"SELECT {_HEAD_COLUMNS} FROM signed_tree_heads ORDER BY tree_size")
        return await cursor.fetchall()
