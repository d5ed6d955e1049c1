"""The Merkle tree recomputed from the replayed hashes in O(log n) memory; signed heads checked.

Every signed tree head is checked against the recomputed tree.
"""

from __future__ import annotations

from proofs import signing
from proofs import merkle
from audit.report import Findings


class TreeCheck:
    """The Merkle tree recomputed from the replayed entry hashes with a frontier (a stack of
    complete subtree roots: O(log n) memory), compared with the stored subtrees as each completes,
    and with every signed tree head at its size. The heads' roots all come from one sequence of
    leaves, so two heads that both match are consistent with each other by construction."""

    def __init__(self, findings: Findings, *, stored_size: int, heads: list, public_key: str | None) -> None:
        self._findings = findings
        self._frontier = merkle.Frontier()
        self.stored_size = stored_size
        self._heads = list(heads)
        self._public_key = public_key
        self.heads_checked = 0

    def wants(self, position: int) -> bool:
        """Whether the entry at `position` can still be compared with anything stored: past the
        stored tree and the last signed head, the recomputed tree has nothing left to meet."""
        return position <= self.stored_size or bool(self._heads)

    def feed(self, position: int, entry_hash: str, stored: dict[merkle.Key, bytes]) -> None:
        completed = self._frontier.append(merkle.entry_leaf(entry_hash))
        if position <= self.stored_size:
            for key, digest in completed:
                if not merkle.is_stored(key):
                    continue
                found = stored.pop(key, None)
                if found != digest:
                    what = "is missing" if found is None else f"is {found.hex()}, recomputed {digest.hex()}"
                    self._findings.record("tree", position, f"the stored subtree {key} (level, index) {what}")
        for key in stored:
            self._findings.record("tree", position, f"the stored subtree {key} completes no subtree of the tree")
        while self._heads and self._heads[0].tree_size <= position:
            self._check_head(self._heads.pop(0), position, entry_hash)

    def _check_head(self, head, position: int, entry_hash: str) -> None:
        self.heads_checked += 1
        root = self._frontier.root().hex()
        if head.tree_size != position:
            self._findings.record("tree_heads", head.tree_size, f"the signed tree size {head.tree_size} is missing")
        elif (head.root_hash, head.hash) != (root, entry_hash):
            self._findings.record(
                "tree_heads", position,
                f"the tree head signed at {head.signed_at} says root {head.root_hash} and hash {head.hash}; the journal"
                f" gives {root} and {entry_hash}: history at or before {position} was rewritten",
            )
        if self._public_key is not None and not signing.verify_tree_head(
            tree_size=head.tree_size, root_hash=head.root_hash, digest=head.hash, signed_at=head.signed_at,
            signature=head.signature, trusted_public_key=self._public_key,
        ):
            self._findings.record("tree_heads", head.tree_size, "the tree head is not signed by the pinned key")

    def finish(self, last_position: int, nodes_beyond: int | None) -> None:
        if self.stored_size > last_position:
            self._findings.record("tree", last_position + 1, f"the stored tree has {self.stored_size} leaves,"
                                  f" the journal ends at {last_position}")
        if nodes_beyond is not None:
            self._findings.record("tree", nodes_beyond, "a stored subtree lies past the stored tree size")
        for head in self._heads:
            self.heads_checked += 1
            self._findings.record("tree_heads", head.tree_size, f"the journal ends at {last_position},"
                                  f" before the signed tree size {head.tree_size}")
        self._heads = []

    @property
    def signatures(self) -> str:
        if not self.heads_checked:
            return "none"
        return "verified" if self._public_key is not None else "unverified"


