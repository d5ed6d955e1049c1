"""The client's copy of the verification math (client/proof.py) against the server's own code:
the hash it recomputes from a transfer answer is `ledger.domain`'s, its RFC 9162 checks accept
exactly the proofs `proofs.merkle` makes, and it signs-checks the bytes `proofs.signing` signs.
The client cannot import those (it depends on `schemas` alone); this test keeps the copy honest."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
import pytest

import schemas
from client import ProofError, proof
from ledger import domain
from proofs import merkle, signing

LEAVES = 40
PAYER, VENDOR = uuid.UUID(int=1), uuid.UUID(int=2)


def entry(**changes) -> schemas.JournalEntry:
    unsealed = schemas.JournalEntry(
        position=7, transfer_id=uuid.UUID(int=9), from_account_id=PAYER, to_account_id=VENDOR, amount=250,
        currency="USD", reference="order 7 \u00e9\u20ac\U0001f600\x7f", metadata={"z": "1", "a": "\u00fc"},
        postings=[schemas.Posting(PAYER, -250), schemas.Posting(VENDOR, 250)],
        committed_at="2026-12-07T12:00:00.123456Z", prev_hash="ab" * 32, hash="",
    )
    unsealed = msgspec.structs.replace(unsealed, **changes)
    return msgspec.structs.replace(unsealed, hash=domain.recompute_hash(unsealed))


KINDS = {
    "transfer": {},
    "refund": {"kind": "refund", "refund_of": uuid.UUID(int=3), "from_account_id": VENDOR, "to_account_id": PAYER},
    "capture": {"kind": "capture", "hold_id": uuid.UUID(int=4)},
    "no metadata": {"metadata": {}, "reference": ""},
    # v3: an account entry moves nothing; its unbounded max_balance is left out like any null
    "account": {"kind": "account", "account_id": PAYER, "account_status": "frozen", "min_balance": -500,
                "to_account_id": PAYER, "amount": 0, "postings": [], "metadata": {}, "reference": ""},
}


@pytest.mark.parametrize("changes", KINDS.values(), ids=KINDS.keys())
def test_the_hash_recomputed_from_a_transfer_answer_is_the_entrys(changes):
    sealed = entry(**changes)
    shown = msgspec.json.decode(schemas.encode(schemas.transfer_from_entry(sealed)), type=schemas.Transfer)
    assert proof.entry_hash(shown) == sealed.hash
    proof.check_entry(shown)
    for field, value in (("amount", 1_000_000), ("to_account_id", uuid.UUID(int=77)), ("currency", "EUR"),
                         ("reference", "another"), ("position", 8), ("kind", "refund" if shown.kind == "transfer" else "transfer")):
        with pytest.raises(ProofError, match="do not hash to"):
            proof.check_entry(msgspec.structs.replace(shown, **{field: value}))
    with pytest.raises(ProofError, match="cannot be recomputed"):
        proof.check_entry(msgspec.structs.replace(shown, prev_hash=None, postings=[]))  # an older server's answer
    changed = {"postings": []} if shown.postings else {"account_status": "active", "min_balance": None}
    with pytest.raises(ProofError, match="do not hash to"):
        proof.check_entry(msgspec.structs.replace(shown, **changed))


def test_the_fields_rebuilt_are_every_field_the_entry_hashes():
    """A field added to the journal entry must be shown and rebuilt too, or every verification of
    an entry that sets it fails; this says so before a release does."""
    rebuilt = {"transfer_id", *proof.SHOWN_ENTRY_FIELDS, *proof.DEFAULTS_LEFT_OUT, "hash"}
    assert rebuilt == set(schemas.JournalEntry.__struct_fields__)
    defaults = {f.name: msgspec.to_builtins(f.default) for f in msgspec.structs.fields(schemas.JournalEntry)
                if f.default is not msgspec.NODEFAULT}
    assert defaults == proof.DEFAULTS_LEFT_OUT
    assert set(proof.SHOWN_ENTRY_FIELDS) | {"id"} | set(proof.DEFAULTS_LEFT_OUT) <= set(schemas.Transfer.__struct_fields__)


def test_what_a_vendor_was_shown_must_be_the_hashed_entry():
    sealed = entry()
    transfer = schemas.transfer_from_entry(sealed)
    shown = schemas.Verification(
        transfer_id=sealed.transfer_id, vendor_account_id=VENDOR, payer_account_id=PAYER, amount=250, currency="USD",
        reference=sealed.reference, committed_at=sealed.committed_at, position=7, hash=sealed.hash,
        status="verified", projected_at=dt.datetime(2026, 12, 7, 12, 0, 1, tzinfo=dt.timezone.utc),
    )
    proof.check_shown(shown, transfer)
    for field, value in (("amount", 1_000_000), ("vendor_account_id", uuid.UUID(int=77)), ("currency", "EUR"),
                         ("payer_account_id", VENDOR), ("reference", "x"), ("hash", "cd" * 32)):
        with pytest.raises(ProofError, match=field):
            proof.check_shown(msgspec.structs.replace(shown, **{field: value}), transfer)
    refund = schemas.transfer_from_entry(entry(**KINDS["refund"]))
    proof.check_shown(msgspec.structs.replace(shown, hash=refund.hash), refund)  # the vendor pays a refund


def complete_subtrees(leaves: list[bytes]) -> dict:
    """Every complete aligned subtree of the leaves, keyed `(level, index)` as `proofs.merkle` reads them."""
    nodes, row, level = {}, leaves, 0
    while row:
        nodes.update({(level, index): digest for index, digest in enumerate(row)})
        row = [merkle.node_hash(row[n], row[n + 1]) for n in range(0, len(row) - 1, 2)]
        level += 1
    return nodes


def test_inclusion_and_consistency_checks_agree_with_the_servers_proofs():
    leaves = [merkle.entry_leaf(f"{i:064x}") for i in range(LEAVES)]
    assert proof.leaf_hash(f"{5:064x}") == leaves[5]
    nodes = complete_subtrees(leaves)
    roots = [merkle.root(size, nodes) for size in range(LEAVES + 1)]
    for size in range(1, LEAVES + 1):
        for index in range(size):
            path = merkle.inclusion_proof(index, size, nodes)
            assert proof.verify_inclusion(index, size, leaves[index], path, roots[size]), (index, size)
            assert not proof.verify_inclusion(index, size, leaves[(index + 1) % LEAVES], path, roots[size])
            assert proof.verify_inclusion(index, size + 1, leaves[index], path, roots[size]) == \
                merkle.verify_inclusion(index, size + 1, leaves[index], path, roots[size])
        for old in range(1, size + 1):
            path = merkle.consistency_proof(old, size, nodes)
            assert proof.verify_consistency(old, size, roots[old], roots[size], path), (old, size)
            if old < size:
                assert not proof.verify_consistency(old, size, roots[old], roots[size - 1], path)
                assert not proof.verify_consistency(old, size, bytes(32), roots[size], path)
                assert not proof.verify_consistency(old, size, roots[old], roots[size], path[:-1])


def test_the_signed_tree_head_bytes_are_the_servers(tmp_path):
    key = signing.load_or_create_key(tmp_path / "key.pem")
    head = schemas.SignedTreeHead(tree_size=12, root_hash="cd" * 32, hash="ef" * 32,
                                  signed_at="2026-12-07T12:00:00.123456Z", signature="00" * 64,
                                  public_key=signing.public_key_hex(key))
    assert proof.tree_head_bytes(head) == signing.tree_head_bytes(12, head.root_hash, head.hash, head.signed_at)
    public, signature = signing.sign_tree_head(key, tree_size=12, root_hash=head.root_hash, digest=head.hash,
                                               signed_at=head.signed_at)
    signed = msgspec.structs.replace(head, signature=signature)
    proof.check_signature(signed, public)
    other = signing.public_key_hex(signing.load_or_create_key(tmp_path / "other.pem"))
    with pytest.raises(ProofError, match="not signed by the pinned key"):
        proof.check_signature(signed, other)
    with pytest.raises(ProofError):
        proof.check_signature(msgspec.structs.replace(signed, tree_size=13), public)
