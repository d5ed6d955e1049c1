"""What the client checks of a proof, with no I/O (docs/proofs.md, contract v3 "proof binding").

A proof binds the entry's `hash` to the signed history; only recomputing that hash from the fields
shown binds those fields. So a transfer is checked in this order: its `hash` is recomputed from
the fields it shows (`check_entry`), what a vendor was shown elsewhere (a verification, a webhook)
is compared with those fields (`check_shown`), then the hash is checked to be a leaf under a tree
head (`verify_inclusion`) whose signature is checked against a pinned key (`check_signature`) and
which extends the last head trusted (`verify_consistency`).

The Merkle math is a small copy of `proofs.merkle`'s verification half (RFC 9162 §2.1.3.2 and
§2.1.4.2), not an import of it: the client depends on `schemas` alone and is installed without the
server (pyproject's base dependencies), and `schemas` holds wire shapes, not algorithms.
tests/client/test_proof_math.py checks the copy against `proofs.merkle` and `ledger.domain`.
"""

from __future__ import annotations

import hashlib
import json

import msgspec

import schemas

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
# The hashed form leaves out a field added after v1 while it holds its default (docs/audit.md).
DEFAULTS_LEFT_OUT: dict[str, object] = {
    "kind": "transfer", "refund_of": None, "hold_id": None,
    # v3 account entries: a null limit is left out like any field at its default.
    "account_id": None, "account_status": None, "min_balance": None, "max_balance": None,
}
# The fields of the entry a transfer answer shows under the entry's own names; its `id` is the
# entry's `transfer_id`, and `hash` is what is recomputed.
SHOWN_ENTRY_FIELDS = (
    "position", "from_account_id", "to_account_id", "amount", "currency", "reference", "metadata",
    "postings", "committed_at", "prev_hash",
)
TREE_HEAD_VERSION = "ledger-tree-head-v1"
# The entry kinds whose vendor is the paying side (a refund returns money from the vendor).
VENDOR_PAYS = frozenset({"refund"})


class ProofError(Exception):
    """The transfer shown is not proven: its fields, its proof or the tree head do not hold."""


class NotSignedYet(ProofError):
    """The transfer is newer than the latest signed tree head: not a forgery, ask again after the
    next signature."""


def hashed_body(transfer: schemas.Transfer) -> dict:
    """The journal entry's hashed fields, rebuilt from a transfer answer, as builtins."""
    shown = msgspec.to_builtins(transfer)
    body = {"transfer_id": shown["id"], **{name: shown[name] for name in SHOWN_ENTRY_FIELDS}}
    for name, default in DEFAULTS_LEFT_OUT.items():
        if shown[name] != default:
            body[name] = shown[name]
    return body


def canonical_bytes(body: dict) -> bytes:
    """docs/audit.md "The canonical bytes of an entry"."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def entry_hash(transfer: schemas.Transfer) -> str:
    """hex SHA-256(prev_hash as 64 ASCII hex characters ‖ canonical bytes)."""
    return hashlib.sha256(transfer.prev_hash.encode("ascii") + canonical_bytes(hashed_body(transfer))).hexdigest()


def check_entry(transfer: schemas.Transfer) -> None:
    """The fields shown are the ones `hash` covers, or ProofError."""
    if transfer.prev_hash is None:
        raise ProofError("the answer does not show prev_hash and postings, so its hash cannot be recomputed")
    if entry_hash(transfer) != transfer.hash:
        raise ProofError(f"the fields shown for transfer {transfer.id} do not hash to its hash {transfer.hash}")


def check_shown(shown: schemas.Verification, transfer: schemas.Transfer) -> None:
    """What a vendor was shown (the verification route, a webhook's `data`) is the checked entry."""
    vendor, payer = transfer.to_account_id, transfer.from_account_id
    if transfer.kind in VENDOR_PAYS:
        vendor, payer = payer, vendor
    differing = [name for name, seen, hashed in (
        ("transfer_id", shown.transfer_id, transfer.id),
        ("vendor_account_id", shown.vendor_account_id, vendor),
        ("payer_account_id", shown.payer_account_id, payer),
        ("amount", shown.amount, transfer.amount),
        ("currency", shown.currency, transfer.currency),
        ("reference", shown.reference, transfer.reference),
        ("committed_at", shown.committed_at, transfer.committed_at),
        ("position", shown.position, transfer.position),
        ("hash", shown.hash, transfer.hash),
    ) if seen != hashed]
    if differing:
        raise ProofError(f"the verification shown differs from the hashed entry in {', '.join(differing)}")


def leaf_hash(entry_hash_hex: str) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + bytes.fromhex(entry_hash_hex)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def verify_inclusion(index: int, size: int, leaf: bytes, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: `leaf` is leaf `index` (0-based) of the tree of `size` leaves with `root`."""
    if not 0 <= index < size:
        return False
    fn, sn, digest = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            digest = _node(sibling, digest)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            digest = _node(digest, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and digest == root


def verify_consistency(old_size: int, size: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: the tree of `old_size` leaves is a prefix of the tree of `size`."""
    if old_size < 1 or old_size > size:
        return False
    if old_size == size:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = [old_root, *proof] if old_size & (old_size - 1) == 0 else list(proof)
    fn, sn = old_size - 1, size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0


def tree_head_bytes(head: schemas.SignedTreeHead) -> bytes:
    """The ASCII bytes the tree head's Ed25519 signature covers (docs/proofs.md)."""
    lines = (TREE_HEAD_VERSION, str(head.tree_size), head.root_hash, head.hash, head.signed_at)
    return "".join(line + "\n" for line in lines).encode("ascii")


def check_signature(head: schemas.SignedTreeHead, public_key: str) -> None:
    """The head is signed by the pinned key (hex), never the key the answer names; or ProofError.
    Needs `cryptography`: `pip install 'wallet-ledger[verify]'` (the server extras have it)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
        key.verify(bytes.fromhex(head.signature), tree_head_bytes(head))
    except (InvalidSignature, ValueError) as error:
        raise ProofError(f"the tree head of size {head.tree_size} is not signed by the pinned key") from error
