"""Proofs (CONTRACT v2 "Proofs"): the journal as an RFC 9162 Merkle tree, its routes, signed tree
heads, the documented verifier, and tampering caught by proofs and by the audit."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import psycopg
import pytest

import audit
from proofs import merkle
from proofs import follower, tree
from proofs import store as tree_store
from proofs import signing
from tests.conftest import eventually
from tests.plugins.journals import execute, first_failure

DOC = Path(__file__).resolve().parents[2] / "docs" / "proofs.md"


async def paid(stack):
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 250)
    assert reply.status == 201, reply.text
    return wallet, vendor, reply.body


async def test_a_vendor_proves_its_payment_is_in_the_tree(stack):
    _, vendor, payment = await paid(stack)
    head = await stack.client.get("/v1/journal/tree", token=vendor.token)
    assert head.status == 200, head.text
    size = head.body["tree_size"]
    assert size >= payment["position"]
    proof = await stack.client.get("/v1/journal/proofs/inclusion", token=vendor.token,
                                   params={"position": payment["position"], "tree_size": size})
    assert proof.status == 200, proof.text
    leaf = merkle.entry_leaf(payment["hash"])
    assert proof.body["leaf_hash"] == leaf.hex()
    path = [bytes.fromhex(h) for h in proof.body["audit_path"]]
    assert merkle.verify_inclusion(payment["position"] - 1, size, leaf, path, bytes.fromhex(head.body["root_hash"]))


async def test_two_tree_heads_are_consistent(stack):
    await paid(stack)
    old = (await stack.client.get("/v1/journal/tree", token=stack.admin)).body
    await paid(stack)
    new = (await stack.client.get("/v1/journal/tree", token=stack.admin)).body
    proof = await stack.client.get("/v1/journal/proofs/consistency", token=stack.admin,
                                   params={"from_size": old["tree_size"], "to_size": new["tree_size"]})
    assert proof.status == 200, proof.text
    assert merkle.verify_consistency(old["tree_size"], new["tree_size"], bytes.fromhex(old["root_hash"]),
                                     bytes.fromhex(new["root_hash"]), [bytes.fromhex(h) for h in proof.body["proof"]])


async def test_the_follower_catches_up_and_the_root_is_the_same_from_stored_nodes(stack):
    await paid(stack)

    async def caught_up():
        async with await stack.superuser() as conn:
            size, head = await tree_store.tree_size(conn), await conn.execute("SELECT position FROM journal_head")
            return size == (await head.fetchone())[0]

    await eventually(caught_up, timeout_s=30)
    async with await stack.superuser() as conn:
        size = await tree_store.tree_size(conn)
        frontier = merkle.Frontier()
        for _, digest in await tree_store.journal_hashes(conn, after=0, limit=size):
            frontier.append(merkle.entry_leaf(digest))
        assert merkle.root(size, await tree.known_nodes(conn, merkle.root_keys(size))) == frontier.root()
        stored = await conn.execute("SELECT count(*), min(level) FROM merkle_nodes")
        count, lowest = await stored.fetchone()
        assert count == sum(size >> level for level in range(merkle.BLOCK_LEVEL, size.bit_length()))
        assert lowest is None or lowest == merkle.BLOCK_LEVEL


async def test_others_cannot_prove_an_entry_and_sizes_past_the_head_are_refused(stack):
    _, _, payment = await paid(stack)
    _, stranger = await stack.principal("client")
    reply = await stack.client.get("/v1/journal/proofs/inclusion", token=stranger, params={"position": payment["position"]})
    assert (reply.status, reply.code) == (403, "forbidden")
    reply = await stack.client.get("/v1/journal/proofs/inclusion", token=stranger, params={"position": 2**62})
    assert (reply.status, reply.code) == (403, "forbidden")
    reply = await stack.client.get("/v1/journal/proofs/inclusion", token=stack.admin, params={"position": 2**62})
    assert (reply.status, reply.code) == (422, "position_out_of_range")
    for path, params in [("/v1/journal/tree", {"tree_size": 2**62}),
                         ("/v1/journal/proofs/inclusion", {"position": 1, "tree_size": 2**62}),
                         ("/v1/journal/proofs/consistency", {"from_size": 1, "to_size": 2**62}),
                         ("/v1/journal/proofs/consistency", {"from_size": 2**62})]:
        reply = await stack.client.get(path, token=stack.admin, params=params)
        assert (reply.status, reply.code) == (422, "tree_size_out_of_range"), (path, reply.text)


async def test_the_latest_signed_tree_head_verifies_against_the_signing_key(stack, tmp_path):
    await paid(stack)
    key = signing.load_or_create_key(tmp_path / "key.pem")
    async with await stack.superuser() as conn:
        signed = await tree.sign_head(conn, key)
    reply = await stack.client.get("/v1/journal/checkpoints/latest", token=stack.admin)
    assert reply.status == 200, reply.text
    body = reply.body
    assert body["tree_size"] == signed.tree_size and body["public_key"] == signing.public_key_hex(key)
    assert signing.verify_tree_head(tree_size=body["tree_size"], root_hash=body["root_hash"], digest=body["hash"],
                                    signed_at=body["signed_at"], signature=body["signature"],
                                    trusted_public_key=signing.public_key_hex(key))
    root = await stack.client.get("/v1/journal/tree", token=stack.admin, params={"tree_size": body["tree_size"]})
    assert root.body["root_hash"] == body["root_hash"]


@pytest.mark.slow  # child processes: the documented verifier
async def test_the_documented_verifier_checks_a_payment_end_to_end(stack, tmp_path):
    _, vendor, payment = await paid(stack)
    key = signing.load_or_create_key(tmp_path / "key.pem")
    async with await stack.superuser() as conn:
        await tree.sign_head(conn, key)
    script = tmp_path / "verify_payment.py"
    script.write_text(_fenced_python(DOC.read_text(), "verify_payment.py"))
    env = {**os.environ, "LEDGER_API_URL": stack.client.base, "LEDGER_TOKEN": vendor.token,
           "LEDGER_PUBLIC_KEY": signing.public_key_hex(key)}
    ok = await _run(script, payment["id"], env=env)
    assert ok[0] == 0, ok
    assert "verified" in ok[1]
    other = signing.load_or_create_key(tmp_path / "other.pem")
    refused = await _run(script, payment["id"], env={**env, "LEDGER_PUBLIC_KEY": signing.public_key_hex(other)})
    assert refused[0] == 1, refused


def _fenced_python(text: str, name: str) -> str:
    match = re.search(r"```python\n# " + re.escape(name) + r"\n(.*?)```", text, re.S)
    assert match, f"no ```python block starting with '# {name}' in {DOC}"
    return match.group(1)


async def _run(script: Path, *args: str, env: dict) -> tuple[int, str, str]:
    child = await asyncio.create_subprocess_exec(sys.executable, str(script), *args, env=env,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(child.communicate(), timeout=60)
    return child.returncode, out.decode(), err.decode()


# ---- tampering (on a database of its own) ---------------------------------------------------


async def _build_tree(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await follower.catch_up(conn)


@pytest.mark.slow  # exhaustive: thousands of proofs read over six stored tree sizes
async def test_proofs_for_every_size_are_right_whatever_the_stored_tree_size(seeded):
    """Proofs combine three sources: stored subtrees (16 leaves and more), small subtrees hashed
    from their 16-entry block, and the tail past the stored tree. With the stored tree stopped at
    sizes on and off block boundaries, every inclusion and consistency proof, for sizes on both
    sides of it, verifies against the root of the journal's own leaves."""
    from tools.seed import seed_journal

    await seed_journal(seeded, entries=50, accounts=3)
    async with await psycopg.AsyncConnection.connect(seeded, autocommit=True) as conn:
        leaves = [merkle.entry_leaf(digest) for _, digest in await tree_store.journal_hashes(conn, after=0, limit=100)]
        assert len(leaves) == 100
        roots = [merkle.EMPTY_ROOT]
        frontier = merkle.Frontier()
        for leaf in leaves:
            frontier.append(leaf)
            roots.append(frontier.root())
        for stored in (0, 13, 16, 37, 64, 77):
            appended, _ = await follower.append_page(conn, limit=stored - await tree_store.tree_size(conn))
            assert await tree_store.tree_size(conn) == stored
            for size in range(max(1, stored - 20), min(len(leaves), stored + 20) + 1):
                for index in range(0, size, 3):
                    path = merkle.inclusion_proof(index, size, await tree.read_nodes(
                        conn, merkle.inclusion_keys(index, size), size))
                    assert merkle.verify_inclusion(index, size, leaves[index], path, roots[size]), (stored, index, size)
                for old in range(1, size, 5):
                    proof = merkle.consistency_proof(old, size, await tree.read_nodes(
                        conn, merkle.consistency_keys(old, size), size))
                    assert merkle.verify_consistency(old, size, roots[old], roots[size], proof), (stored, old, size)
                assert await tree.root_at(conn, size) == roots[size]


async def _proofs(url: str, *, position: int, old: int, new: int):
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        nodes = await tree.read_nodes(conn, merkle.inclusion_keys(position - 1, old), old)
        path = merkle.inclusion_proof(position - 1, old, nodes)
        nodes = await tree.read_nodes(conn, merkle.consistency_keys(old, new) | merkle.root_keys(new), new)
        entry_hash = await tree_store.journal_hash_at(conn, position)
        return entry_hash, path, merkle.consistency_proof(old, new, nodes), merkle.root(new, nodes)


async def test_a_rewritten_entry_fails_its_inclusion_and_consistency_proofs_and_the_audit_names_it(seeded, tmp_path):
    key = signing.load_or_create_key(tmp_path / "key.pem")
    await _build_tree(seeded)
    async with await psycopg.AsyncConnection.connect(seeded, autocommit=True) as conn:
        old = await tree.sign_head(conn, key)
    honest_hash, path, proof, root = await _proofs(seeded, position=20, old=old.tree_size, new=old.tree_size)
    old_root = bytes.fromhex(old.root_hash)
    assert merkle.verify_inclusion(19, old.tree_size, merkle.entry_leaf(honest_hash), path, old_root)
    from tools.seed import seed_journal

    await seed_journal(seeded, entries=10, accounts=3)
    await execute(seeded, ("UPDATE journal SET hash = %s WHERE position = 20", ("ab" * 32,)))
    async with await psycopg.AsyncConnection.connect(seeded, autocommit=True) as conn:
        new_size = await follower.rebuild(conn)
    tampered_hash, path, proof, new_root = await _proofs(seeded, position=20, old=old.tree_size, new=new_size)
    assert tampered_hash == "ab" * 32
    assert not merkle.verify_inclusion(19, old.tree_size, merkle.entry_leaf(tampered_hash), path, old_root)
    assert not merkle.verify_consistency(old.tree_size, new_size, old_root, new_root, proof)
    report = await audit.run_audit(seeded, public_key=signing.public_key_hex(key))
    assert first_failure(report)[0] == 20
    failed = {check.name for check in report.checks if not check.ok}
    assert "tree_heads" in failed and report.tree_head_signatures == "verified"


async def test_a_stored_subtree_changed_is_caught_by_the_audit(seeded):
    await _build_tree(seeded)
    await execute(seeded, ("UPDATE merkle_nodes SET hash = %s WHERE level = 4 AND node_index = 1", (bytes(32),)))
    report = await audit.run_audit(seeded)
    assert first_failure(report) == (32, "tree")
    assert report.tree_head_signatures == "none"


async def test_signed_heads_without_a_pinned_key_are_reported_unverified(seeded, tmp_path):
    await _build_tree(seeded)
    async with await psycopg.AsyncConnection.connect(seeded, autocommit=True) as conn:
        await tree.sign_head(conn, signing.load_or_create_key(tmp_path / "key.pem"))
    report = await audit.run_audit(seeded)
    assert report.ok and report.tree_heads == 1 and report.tree_head_signatures == "unverified"


async def test_the_typed_client_fetches_and_verifies_an_inclusion_proof(stack, tmp_path):
    from client import LedgerClient, SyncLedgerClient

    _, vendor, payment = await paid(stack)
    async with await stack.superuser() as conn:
        await tree.sign_head(conn, signing.load_or_create_key(tmp_path / "key.pem"))
    async with LedgerClient(stack.client.base, token=vendor.token) as ledger:
        head = await ledger.tree()
        proof = await ledger.inclusion_proof(payment["position"], tree_size=head.tree_size)
        assert LedgerClient.verify_inclusion(payment["hash"], proof, head.root_hash)
        assert not LedgerClient.verify_inclusion("00" * 32, proof, head.root_hash)
        consistency = await ledger.consistency_proof(1, to_size=head.tree_size)
        assert consistency.to_size == head.tree_size
        assert (await ledger.latest_checkpoint()).tree_size >= 1
    assert SyncLedgerClient.verify_inclusion(payment["hash"], proof, head.root_hash)


async def test_subtrees_below_the_block_level_are_refused_by_the_schema(seeded):
    """Migration 0013: the small subtrees are hashed from their blocks, never stored; the schema
    refuses them, so a stale or forged one cannot sit beside the real tree."""
    await _build_tree(seeded)
    with pytest.raises(psycopg.errors.CheckViolation):
        await execute(seeded, ("INSERT INTO merkle_nodes (level, node_index, complete_at, hash) VALUES (3, 99, 800, %s)",
                               (bytes(32),)))
