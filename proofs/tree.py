"""The Merkle tree as a follower of the journal: appends subtrees, answers proofs, signs tree heads.

The tree is kept by a task of its own (`TreeFollower`, run beside the projector by
`projector.consumer.serve`), not by the projector's apply transaction: it has its own
checkpoint (`merkle_state.tree_size`), reads only `(position, hash)` from the journal and needs
no event, so the projector stays as it was. Each round locks its checkpoint row, reads up to
`PAGE_ENTRIES_MAX` hashes after it, appends them to the frontier (the O(log n) complete subtrees
of the stored size, read back from `merkle_nodes`) and writes every subtree they complete, with
the new size, in one transaction.

A proof for any size up to the journal head reads O(log n) stored subtrees in one statement
(`proofs.merkle` plans which). When the follower is behind the asked size, the tail (at most
`TAIL_ENTRIES_MAX` entries) is hashed on the fly from the journal, so a proof never waits for it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path

from proofs import signing
from ledger import domain, logs, store
from proofs import merkle
from proofs import store as tree_store
from proofs.merkle import Key
from schemas import SignedTreeHead

log = logging.getLogger("proofs.tree")

PAGE_ENTRIES_MAX = 10_000  # leaves appended per transaction
POLL_S = 0.1  # how often a caught-up follower looks for new entries (a round costs ~0.8 ms of CPU)
RETRY_S = 0.5  # after a failed round (the database away)
TAIL_ENTRIES_MAX = 10_000  # entries a proof may hash on the fly past the stored tree


class TreeBehind(Exception):
    """The stored tree is more than `TAIL_ENTRIES_MAX` entries behind the asked size."""


# ---- reading: roots and proofs --------------------------------------------------------------


async def read_nodes(conn, keys: set[Key], size: int, *, tail_max: int = TAIL_ENTRIES_MAX) -> dict[Key, bytes]:
    """The subtrees `keys` of a tree of `size` leaves (size <= the journal head): stored ones read
    in one statement, the small ones below `merkle.BLOCK_LEVEL` from their blocks' journal hashes,
    and those the follower has not written yet computed from the journal's tail."""
    stored_size = await tree_store.tree_size(conn)
    on_edge = {key for key in keys if merkle.is_stored(key) and merkle.key_end(key) > stored_size}
    if on_edge and size - stored_size > tail_max:
        raise TreeBehind(f"the stored tree is at {stored_size}, {size - stored_size} entries behind {size}")
    found = await known_nodes(conn, (set(keys) - on_edge) | (merkle.root_keys(stored_size) if on_edge else set()))
    if on_edge:
        frontier = merkle.Frontier.of(stored_size, found)
        for _, digest in await tree_store.journal_hashes(conn, after=stored_size, until=size, limit=size - stored_size):
            for key, node in frontier.append(merkle.entry_leaf(digest)):
                if key in on_edge:
                    found[key] = node
    return found


async def known_nodes(conn, keys: set[Key]) -> dict[Key, bytes]:
    """Complete subtrees whose leaves are all in the journal (the large ones must be stored): the
    stored ones in one statement, the ones below `merkle.BLOCK_LEVEL` hashed from the journal
    hashes of their blocks, in one more."""
    found = await tree_store.nodes(conn, {key for key in keys if merkle.is_stored(key)})
    ends: dict[int, int] = {}
    for key in keys:
        if not merkle.is_stored(key):
            start = merkle.block_start(key)
            ends[start] = max(ends.get(start, start), merkle.key_end(key))
    if ends:
        hashes = dict(await tree_store.journal_hashes_at(
            conn, [leaf + 1 for start, end in ends.items() for leaf in range(start, end)]))
        for start, end in ends.items():
            found.update(merkle.block_nodes(start, [merkle.entry_leaf(hashes[leaf + 1]) for leaf in range(start, end)]))
    return found


async def root_at(conn, size: int) -> bytes:
    """MTH of the first `size` leaves; the tail past the stored tree streamed, however long."""
    stored_size = min(await tree_store.tree_size(conn), size)
    frontier = merkle.Frontier.of(stored_size, await known_nodes(conn, merkle.root_keys(stored_size)))
    while frontier.size < size:
        page = await tree_store.journal_hashes(conn, after=frontier.size, until=size, limit=PAGE_ENTRIES_MAX)
        assert page and page[0][0] == frontier.size + 1, "the journal has a gap below its head"
        for _, digest in page:
            frontier.append(merkle.entry_leaf(digest))
    return frontier.root()


# ---- writing: the follower ------------------------------------------------------------------


async def append_page(
    conn, *, limit: int = PAGE_ENTRIES_MAX, frontier: merkle.Frontier | None = None
) -> tuple[int, merkle.Frontier]:
    """One transaction: lock the tree's size, append the next journal entries (at most `limit`),
    store the subtrees they complete; returns how many were appended and the frontier at the new
    size. `frontier` (the one a previous call returned) saves reading it back when it is still at
    the stored size; it is changed in place, so after a failure the caller must drop it."""
    async with conn.transaction():
        size = await tree_store.lock_tree_size(conn)
        page = await tree_store.journal_hashes(conn, after=size, limit=limit)
        run = [digest for n, (position, digest) in enumerate(page) if position == size + n + 1]
        if frontier is None or frontier.size != size:
            frontier = merkle.Frontier.of(size, await known_nodes(conn, merkle.root_keys(size)))
        if not run:
            return 0, frontier
        completed = [node for digest in run for node in frontier.append(merkle.entry_leaf(digest))
                     if merkle.is_stored(node[0])]
        await tree_store.insert_nodes(conn, completed)
        await tree_store.set_tree_size(conn, frontier.size)
    return len(run), frontier


async def catch_up(conn) -> int:
    """Append pages until the tree reaches the journal's end; returns the tree size."""
    frontier = None
    while True:
        appended, frontier = await append_page(conn, frontier=frontier)
        if appended < PAGE_ENTRIES_MAX:
            return await tree_store.tree_size(conn)


async def rebuild(conn) -> int:
    """Forget the tree and replay it from the journal (derived data, like the read models)."""
    async with conn.transaction():
        await tree_store.reset_tree(conn)
    return await catch_up(conn)


# ---- signing tree heads ---------------------------------------------------------------------


async def sign_head(conn, key, *, tree_size: int | None = None) -> SignedTreeHead | None:
    """Sign the tree head at `tree_size` (default: the journal head) and store it; None when the
    journal is empty. A size already signed keeps its first signature."""
    if tree_size is None:
        tree_size = (await store.journal_head(conn)).position
    if tree_size == 0:
        return None
    root_hash = (await root_at(conn, tree_size)).hex()
    digest = await tree_store.journal_hash_at(conn, tree_size)
    assert digest is not None, "a position at or below the head has an entry"
    now = dt.datetime.now(dt.timezone.utc)
    signed_at = domain.format_timestamp(now)
    public_key, signature = signing.sign_tree_head(key, tree_size=tree_size, root_hash=root_hash, digest=digest,
                                                   signed_at=signed_at)
    await tree_store.insert_tree_head(conn, tree_size=tree_size, root_hash=root_hash, digest=digest,
                                      public_key=public_key, signature=signature, signed_at=now)
    return SignedTreeHead(tree_size=tree_size, root_hash=root_hash, hash=digest, signed_at=signed_at,
                          signature=signature, public_key=public_key)


class TreeFollower:
    """Follows the journal by polling (`POLL_S`: the proofs hash the tail it has not reached
    yet, so a tenth of a second behind costs them little, and rounds of more entries cost the
    write path less per entry); signs the tree head every `sign_interval_s`
    (0: never) with the key at `key_path`, when the tree has grown since the last signature."""

    def __init__(self, pool, *, sign_interval_s: int = 0, key_path: str | None = None) -> None:
        self._pool = pool
        self._interval_s = sign_interval_s
        self._key = signing.load_or_create_key(Path(key_path)) if sign_interval_s and key_path else None
        self._signed_size = 0
        self._next_sign = time.monotonic()
        self._frontier: merkle.Frontier | None = None  # kept between rounds: not read back each time

    async def run(self) -> None:
        while True:
            try:
                async with self._pool.connection() as conn:
                    appended = 0
                    if await tree_store.entries_behind(conn) > 0:  # one cheap read while idle
                        appended, self._frontier = await append_page(conn, frontier=self._frontier)
                    if self._key is not None and time.monotonic() >= self._next_sign:
                        await self._sign(conn)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database away: the journal waits for us
                self._frontier = None  # it may hold leaves of a round that did not commit
                logs.round_failed(log, "tree round failed; retrying", error)
                await asyncio.sleep(RETRY_S)
                continue
            if appended < PAGE_ENTRIES_MAX:
                await asyncio.sleep(POLL_S)

    async def _sign(self, conn) -> None:
        self._next_sign = time.monotonic() + self._interval_s
        size = await tree_store.tree_size(conn)
        if size > self._signed_size:
            await sign_head(conn, self._key, tree_size=size)
            self._signed_size = size
