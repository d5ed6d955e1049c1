"""Only extensions are signed: a new tree head must be RFC 9162 consistent with the last one signed.

Whoever can write the database can rewrite an entry, rehash every later one and rebuild the tree
(`ledger projector rebuild`): the stored tree is then another tree, and signing it with the pinned
key would vouch for the forged history. Before each signature the signer proves, from the stored
subtrees, that the tree it is about to sign extends the last signed head: a consistency proof from
that head's size to the new size, checked against the signed root (`merkle.verify_consistency`).
It reads O(log n) subtrees in two statements, the same as one proof, so it costs little at every
`LEDGER_CHECKPOINT_INTERVAL_S`. When the proof fails nothing is signed, and the latest head stays
the last good one; the signer's gauge `ledger_tree_heads_forked` and `/readyz` report it.
"""

from __future__ import annotations

from ledger import metrics, store
from proofs import merkle, tree
from proofs import store as tree_store
from schemas import SignedTreeHead


class ForkedHistory(Exception):
    """The journal's tree is not an extension of the last signed tree head."""


async def check_extension(conn, size: int, *, tail_max: int = tree.TAIL_ENTRIES_MAX):
    """Raise `ForkedHistory` unless the tree of the journal's first `size` entries extends the last
    signed tree head (a smaller `size` checks the tree at that head's size); returns that head, or
    None when none is signed yet. Raises `tree.TreeBehind` when the stored tree is more than
    `tail_max` entries behind (a follower tells at its next check)."""
    last = await tree_store.latest_tree_head(conn)
    if last is None:
        return None
    size = max(size, last.tree_size)
    journal_size = (await store.journal_head(conn)).position
    if journal_size < size:
        raise ForkedHistory(f"the journal holds {journal_size} entries, fewer than the {size} the last signed head"
                            " or the tree covers")
    keys = merkle.root_keys(size)
    if size > last.tree_size:
        keys |= merkle.consistency_keys(last.tree_size, size)
    nodes = await tree.read_nodes(conn, keys, size, tail_max=tail_max)
    proof = merkle.consistency_proof(last.tree_size, size, nodes) if size > last.tree_size else []
    if not merkle.verify_consistency(last.tree_size, size, bytes.fromhex(last.root_hash), merkle.root(size, nodes), proof):
        raise ForkedHistory(f"the tree of {size} entries is not an extension of the signed head of {last.tree_size}"
                            f" (root {last.root_hash})")
    return last


async def sign_extension(conn, key, *, tree_size: int, newer_only: bool = False,
                         tail_max: int = tree.TAIL_ENTRIES_MAX) -> SignedTreeHead | None:
    """Sign the tree head at `tree_size` if it extends the last signed head, checked and signed in
    one snapshot so that the root signed is the root checked; raise `ForkedHistory` if not. With
    `newer_only`, None when `tree_size` is not past the last signed head (nothing new to sign)."""
    async with conn.transaction():
        await tree_store.repeatable_read(conn)
        try:
            last = await check_extension(conn, tree_size, tail_max=tail_max)
        except ForkedHistory:
            metrics.TREE_HEADS_FORKED.set(1)
            raise
        metrics.TREE_HEADS_FORKED.set(0)
        if newer_only and last is not None and tree_size <= last.tree_size:
            return None
        return await tree.sign_head(conn, key, tree_size=tree_size)
