"""The pure tree math of `proofs.merkle` against a naive, recursive transcription of RFC 9162 §2.1."""

from __future__ import annotations

import hashlib

import pytest

from proofs import merkle

SIZES = range(1, 71)


def leaves(count: int) -> list[bytes]:
    return [merkle.leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(count)]


def naive_mth(d: list[bytes]) -> bytes:
    if not d:
        return merkle.EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return merkle.node_hash(naive_mth(d[:k]), naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return naive_path(m, d[:k]) + [naive_mth(d[k:])]
    return naive_path(m - k, d[k:]) + [naive_mth(d[:k])]


def naive_proof(m: int, d: list[bytes]) -> list[bytes]:
    def subproof(m: int, d: list[bytes], whole: bool) -> list[bytes]:
        if m == len(d):
            return [] if whole else [naive_mth(d)]
        k = 1 << ((len(d) - 1).bit_length() - 1)
        if m <= k:
            return subproof(m, d[:k], whole) + [naive_mth(d[k:])]
        return subproof(m - k, d[k:], False) + [naive_mth(d[:k])]

    return subproof(m, d, True)


def stored_nodes(d: list[bytes]) -> dict[merkle.Key, bytes]:
    frontier, nodes = merkle.Frontier(), {}
    for leaf in d:
        nodes.update(frontier.append(leaf))
    return nodes


@pytest.fixture(scope="module")
def tree() -> tuple[list[bytes], dict[merkle.Key, bytes]]:
    d = leaves(max(SIZES))
    return d, stored_nodes(d)


def test_the_stored_nodes_are_exactly_the_complete_subtrees(tree):
    d, nodes = tree
    for (level, index), digest in nodes.items():
        assert digest == naive_mth(d[index << level:(index + 1) << level])
    assert len(nodes) == sum(len(d) >> level for level in range(len(d).bit_length()))


def test_the_root_of_every_size_is_the_naive_root(tree):
    d, nodes = tree
    frontier = merkle.Frontier()
    for size in SIZES:
        frontier.append(d[size - 1])
        assert merkle.root(size, nodes) == naive_mth(d[:size]) == frontier.root()
    assert merkle.root(0, {}) == hashlib.sha256(b"").digest()


def test_every_inclusion_proof_is_the_naive_path_and_verifies(tree):
    d, nodes = tree
    for size in SIZES:
        top = naive_mth(d[:size])
        for index in range(size):
            needed = merkle.inclusion_keys(index, size)
            assert len(needed) <= 2 * size.bit_length() + 1
            proof = merkle.inclusion_proof(index, size, {key: nodes[key] for key in needed})
            assert proof == naive_path(index, d[:size])
            assert merkle.verify_inclusion(index, size, d[index], proof, top)


def test_every_consistency_proof_is_the_naive_proof_and_verifies(tree):
    d, nodes = tree
    for size in SIZES:
        top = naive_mth(d[:size])
        for old in range(1, size + 1):
            needed = merkle.consistency_keys(old, size)
            assert len(needed) <= 2 * size.bit_length()
            proof = merkle.consistency_proof(old, size, {key: nodes[key] for key in needed})
            assert proof == naive_proof(old, d[:size])
            assert merkle.verify_consistency(old, size, naive_mth(d[:old]), top, proof)


def test_a_wrong_leaf_index_root_or_sibling_fails_inclusion(tree):
    d, nodes = tree
    for size in (1, 2, 3, 7, 8, 33, 70):
        top = naive_mth(d[:size])
        for index in range(size):
            proof = naive_path(index, d[:size])
            other = d[(index + 1) % len(d)]
            assert not merkle.verify_inclusion(index, size, other, proof, top)
            assert not merkle.verify_inclusion(index, size, d[index], proof, hashlib.sha256(b"other").digest())
            assert not merkle.verify_inclusion(size, size, d[index], proof, top)
            if proof:
                assert not merkle.verify_inclusion(index, size, d[index], proof[:-1], top)
                assert not merkle.verify_inclusion(index, size, d[index], proof + [d[0]], top)
                bad = [bytes(32)] + proof[1:]
                assert not merkle.verify_inclusion(index, size, d[index], bad, top)


def test_a_changed_leaf_or_wrong_root_fails_consistency(tree):
    d, _ = tree
    for size in (2, 3, 5, 8, 13, 64, 70):
        changed = list(d[:size])
        changed[0] = merkle.leaf_hash(b"rewritten")
        for old in range(1, size):
            proof = naive_proof(old, d[:size])
            assert merkle.verify_consistency(old, size, naive_mth(d[:old]), naive_mth(d[:size]), proof)
            assert not merkle.verify_consistency(old, size, naive_mth(changed[:old]), naive_mth(d[:size]), proof)
            forged = naive_proof(old, changed)
            assert not merkle.verify_consistency(old, size, naive_mth(d[:old]), naive_mth(changed), forged)
            assert not merkle.verify_consistency(old, size, naive_mth(d[:old]), naive_mth(d[:size]), proof[:-1])


def test_equal_sizes_are_consistent_only_with_an_empty_proof_and_equal_roots(tree):
    d, _ = tree
    top = naive_mth(d[:5])
    assert merkle.verify_consistency(5, 5, top, top, [])
    assert not merkle.verify_consistency(5, 5, top, top, [top])
    assert not merkle.verify_consistency(5, 5, top, naive_mth(d[:4]), [])
    assert not merkle.verify_consistency(6, 5, top, top, [])


def test_a_frontier_rebuilt_from_stored_nodes_continues_the_tree(tree):
    d, nodes = tree
    for size in SIZES:
        frontier = merkle.Frontier.of(size, nodes)
        assert frontier.root() == naive_mth(d[:size])
        if size < len(d):
            for key, digest in frontier.append(d[size]):
                assert nodes[key] == digest


def test_a_blocks_nodes_are_every_small_complete_subtree_of_its_leaves(tree):
    """What is not stored (below `BLOCK_LEVEL`) is hashed from one block's leaves: for every block
    and every prefix of it, exactly the small complete subtrees those leaves make, equal to the
    naive ones."""
    d, nodes = tree
    for start in range(0, len(d), merkle.BLOCK_LEAVES):
        for end in range(start + 1, min(start + merkle.BLOCK_LEAVES, len(d)) + 1):
            found = merkle.block_nodes(start, d[start:end])
            expected = {key: digest for key, digest in nodes.items()
                        if not merkle.is_stored(key) and start <= key[1] << key[0] and merkle.key_end(key) <= end}
            assert found == expected
            assert {merkle.block_start(key) for key in found} == {start}


def test_every_proof_key_below_the_block_level_lies_in_a_block_of_at_most_16_leaves():
    """A proof reads at most one block per small key's block: the leaves a small key needs are
    inside its own aligned block, never across two."""
    for size in range(1, 200):
        for index in range(size):
            for key in merkle.inclusion_keys(index, size) | merkle.root_keys(size):
                if not merkle.is_stored(key):
                    start = merkle.block_start(key)
                    assert start <= key[1] << key[0] and merkle.key_end(key) <= start + merkle.BLOCK_LEAVES
