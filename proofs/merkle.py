"""The Merkle tree of RFC 9162 (Certificate Transparency v2) over the journal: pure, no I/O.

Leaf i (0-based) is the journal entry at position i + 1; its leaf data is the 32 bytes of that
entry's `hash`. `leaf_hash = SHA-256(0x00 || data)`, `node = SHA-256(0x01 || left || right)`.

What is stored is the hash of every complete, aligned power-of-two subtree of at least
`BLOCK_LEAVES` leaves, named by its `Key` `(level, index)`: it covers leaves
`[index * 2**level, (index + 1) * 2**level)`. The subtrees below `BLOCK_LEVEL` (level 0 holds the
leaf hashes) are not stored: they lie inside one aligned block of `BLOCK_LEAVES` leaves, and
`block_nodes` computes them from that block's journal hashes, one short range read. That keeps the
stored rows at one per eight entries instead of two per entry. Every subtree an RFC 9162 proof needs for any tree size is either such a complete
subtree or a range `[start, size)` on the tree's incomplete right edge, which decomposes into at
most log2(size) complete ones (`range_keys`). So a proof plans the keys it needs
(`inclusion_keys`, `consistency_keys`: O(log n) of them), reads them in one query, and hashes
the right edge on the fly (`inclusion_proof`, `consistency_proof`, `root`).

`Frontier` appends leaves keeping only the roots of the complete subtrees of the current size
(the binary digits of the size): O(log n) memory, used by the tree follower, the rebuild and the
audit alike. The verifiers are RFC 9162 §2.1.3.2 and §2.1.4.2, word for word.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) of RFC 9162

Key = tuple[int, int]  # (level, index)
Range = tuple[int, int]  # leaves [start, end)

BLOCK_LEVEL = 4  # subtrees of this level and above are stored; the ones below are computed
BLOCK_LEAVES = 1 << BLOCK_LEVEL


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def entry_leaf(entry_hash_hex: str) -> bytes:
    """The leaf hash of a journal entry, from its hex `hash`."""
    return leaf_hash(bytes.fromhex(entry_hash_hex))


def key_end(key: Key) -> int:
    """The tree size at which the subtree `key` becomes complete (its last leaf + 1)."""
    level, index = key
    return (index + 1) << level


def is_stored(key: Key) -> bool:
    """Whether the subtree `key` is kept in storage (else `block_nodes` computes it)."""
    return key[0] >= BLOCK_LEVEL


def block_start(key: Key) -> int:
    """The first leaf of the aligned block of `BLOCK_LEAVES` leaves that holds the subtree `key`
    (level below `BLOCK_LEVEL`)."""
    level, index = key
    return (index << level) >> BLOCK_LEVEL << BLOCK_LEVEL


def block_nodes(start: int, leaves: list[bytes]) -> dict[Key, bytes]:
    """Every complete subtree below `BLOCK_LEVEL` of the leaves `start, start + 1, ...` (leaf
    hashes, `start` aligned to `BLOCK_LEAVES`, at most `BLOCK_LEAVES` of them)."""
    assert start % BLOCK_LEAVES == 0 and len(leaves) <= BLOCK_LEAVES
    found: dict[Key, bytes] = {}
    row, index = leaves, start
    for level in range(BLOCK_LEVEL):
        found.update({(level, index + n): digest for n, digest in enumerate(row)})
        row = [node_hash(row[n], row[n + 1]) for n in range(0, len(row) - 1, 2)]
        index >>= 1
    return found


def _split(size: int) -> int:
    """The largest power of two smaller than `size` (size >= 2): where RFC 9162 splits D[n]."""
    assert size >= 2
    return 1 << ((size - 1).bit_length() - 1)


# ---- planning: which complete subtrees a range, a root or a proof needs ------------------------


def range_keys(start: int, end: int) -> list[Key]:
    """The complete aligned subtrees that make up leaves [start, end), left to right, largest
    first. For the ranges of RFC 9162 proofs (start aligned to a power of two at least end -
    start) their right fold is MTH(D[start:end])."""
    assert 0 <= start < end
    keys = []
    while start < end:
        level = (end - start).bit_length() - 1
        while start % (1 << level):
            level -= 1
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The subtrees whose hashes make PATH(index, D[size]) (§2.1.3.1), from the leaf up."""
    assert 0 <= index < size
    ranges, start, end = [], 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start = start + k
    return ranges[::-1]


def consistency_ranges(old_size: int, size: int) -> list[Range]:
    """The subtrees whose hashes make PROOF(old_size, D[size]) (§2.1.4.1); empty when equal."""
    assert 1 <= old_size <= size
    ranges, start, end, whole = [], 0, size, True
    m = old_size
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start = start + k
            whole = False
    if not whole:
        ranges.append((start, end))
    return ranges[::-1]


def keys_of(ranges: Iterable[Range]) -> set[Key]:
    return {key for start, end in ranges for key in range_keys(start, end)}


def inclusion_keys(index: int, size: int) -> set[Key]:
    return keys_of(inclusion_ranges(index, size)) | {(0, index)}


def consistency_keys(old_size: int, size: int) -> set[Key]:
    return keys_of(consistency_ranges(old_size, size))


def root_keys(size: int) -> set[Key]:
    return set(range_keys(0, size)) if size else set()


# ---- hashing from stored subtrees --------------------------------------------------------------


def range_hash(start: int, end: int, nodes: Mapping[Key, bytes]) -> bytes:
    """MTH(D[start:end]) from the complete subtrees it is made of (`nodes` holds them)."""
    keys = range_keys(start, end)
    digest = nodes[keys[-1]]
    for key in reversed(keys[:-1]):
        digest = node_hash(nodes[key], digest)
    return digest


def root(size: int, nodes: Mapping[Key, bytes]) -> bytes:
    return range_hash(0, size, nodes) if size else EMPTY_ROOT


def inclusion_proof(index: int, size: int, nodes: Mapping[Key, bytes]) -> list[bytes]:
    return [range_hash(start, end, nodes) for start, end in inclusion_ranges(index, size)]


def consistency_proof(old_size: int, size: int, nodes: Mapping[Key, bytes]) -> list[bytes]:
    return [range_hash(start, end, nodes) for start, end in consistency_ranges(old_size, size)]


# ---- appending ---------------------------------------------------------------------------------


@dataclass
class Frontier:
    """The roots of the complete subtrees of a tree of `size` leaves, one per binary digit of
    `size` (largest first): all that is needed to append a leaf or to compute the root."""

    size: int = 0
    stack: list[tuple[Key, bytes]] = field(default_factory=list)

    @classmethod
    def of(cls, size: int, nodes: Mapping[Key, bytes]) -> "Frontier":
        return cls(size, [(key, nodes[key]) for key in range_keys(0, size)] if size else [])

    def append(self, leaf: bytes) -> list[tuple[Key, bytes]]:
        """Add one leaf hash; returns the subtrees it completes, the leaf itself first (the ones
        to store are those `is_stored` keeps)."""
        key, digest = (0, self.size), leaf
        completed = [(key, digest)]
        while self.stack and self.stack[-1][0][0] == key[0]:
            (level, index), left = self.stack.pop()
            key, digest = (level + 1, index >> 1), node_hash(left, digest)
            completed.append((key, digest))
        self.stack.append((key, digest))
        self.size += 1
        return completed

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        digest = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            digest = node_hash(left, digest)
        return digest


# ---- verification (what a client runs; also in docs/proofs.md) --------------------------------


def verify_inclusion(index: int, size: int, leaf: bytes, path: list[bytes], expected_root: bytes) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size or index < 0:
        return False
    fn, sn, digest = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            digest = node_hash(sibling, digest)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            digest = node_hash(digest, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and digest == expected_root


def verify_consistency(old_size: int, size: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 §2.1.4.2 (equal sizes: an empty proof and equal roots)."""
    if old_size < 1 or old_size > size:
        return False
    if old_size == size:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two
        path.insert(0, old_root)
    fn, sn = old_size - 1, size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0
