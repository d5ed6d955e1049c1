"""The Merkle tree's reads: roots and proofs of the stored tree, and signed tree heads.

The tree is written by its follower (`proofs.follower.TreeFollower`), which keeps the complete
subtrees in `merkle_nodes` and the stored size as its cursor. A proof for any size up to the
journal head reads O(log n) stored subtrees in one statement (`proofs.merkle` plans which). When
the follower is behind the asked size, the tail (at most `TAIL_ENTRIES_MAX` entries) is hashed on
the fly from the journal, so a proof never waits for it.
"""

from __future__ import annotations

import datetime as dt

from proofs import signing
from ledger import domain, store
from proofs import merkle
from proofs import store as tree_store
from proofs.merkle import Key
from schemas import SignedTreeHead

PAGE_ENTRIES_MAX = 10_000  # leaves read per page: a root's tail streamed, the follower's step
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

