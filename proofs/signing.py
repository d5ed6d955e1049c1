"""Ed25519 keys and what they sign: the journal head (the signed head) and the Merkle tree head.

The signed head is kept outside the database, in the file `ledger checkpoint` writes; the signed
tree head carries the Merkle root as well.

Whoever can write the database can rewrite an entry and rehash every later one; the chain then
looks sound. A head signed before the rewrite cannot be forged afterwards, so
`ledger audit --checkpoint FILE` proves that the journal up to the signed position still hashes
to the signed hash. The signature covers `signed_bytes()`; the key never leaves its file. No I/O
but the key and head files: taking a signed head from the database is `proofs.command`'s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# The signed head's version line and file format: named "checkpoint" outside, as the command.
SIGNED_FORMAT_VERSION = "ledger-checkpoint-v1"
KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700

_HEX64 = "^[0-9a-f]{64}$"


class SignedHead(msgspec.Struct, frozen=True, kw_only=True):
    """The signed journal head, as its file holds it (`ledger checkpoint --out`): the head, the
    signer's raw public key and the signature, all hex."""

    position: Annotated[int, msgspec.Meta(ge=1)]
    hash: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    public_key: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    signature: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{128}$")]
    signed_at: str


def signed_bytes(position: int, digest: str, signed_at: str) -> bytes:
    """What the signature covers: a version line, then the head and the time, one per line.
    The version line keeps a signature made for anything else from passing as a signed head."""
    return f"{SIGNED_FORMAT_VERSION}\n{position}\n{digest}\n{signed_at}\n".encode("ascii")


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Read the PEM private key, or create it on first use readable by its owner only."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
        return key
    path.parent.mkdir(mode=KEY_DIR_MODE, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # O_EXCL: never overwrite a key that appeared meanwhile; the mode applies from the first byte.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE), "wb") as out:
        out.write(pem)
    return key


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def sign(key: Ed25519PrivateKey, *, position: int, digest: str, signed_at: str) -> SignedHead:
    signature = key.sign(signed_bytes(position, digest, signed_at))
    return SignedHead(
        position=position, hash=digest, public_key=public_key_hex(key), signature=signature.hex(), signed_at=signed_at
    )


def verify(head: SignedHead, trusted_public_key: str) -> bool:
    """True when `trusted_public_key` (hex, pinned by the verifier: `ledger checkpoint
    --export-public-key` prints it) signed the file's head. The key written inside the file is
    only a label: whoever rewrote the database can sign a new file with a key of their own."""
    if head.public_key != trusted_public_key.strip().lower():
        return False
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(trusted_public_key.strip()))
    message = signed_bytes(head.position, head.hash, head.signed_at)
    try:
        public_key.verify(bytes.fromhex(head.signature), message)
    except InvalidSignature:
        return False
    return True


def read_public_key(text: str) -> str:
    """A pinned public key: 64 hex characters, given as such or as the path of a file holding them."""
    candidate = text.strip()
    if not re.fullmatch(_HEX64, candidate.lower()) and Path(candidate).is_file():
        candidate = Path(candidate).read_text().strip()
    if not re.fullmatch(_HEX64, candidate.lower()):
        raise ValueError("not 64 hex characters (an Ed25519 public key, raw) nor a file holding them")
    return candidate.lower()


def read_file(path: Path) -> SignedHead:
    """Raises OSError or msgspec.DecodeError/ValidationError when the file is not a signed head."""
    return msgspec.json.decode(path.read_bytes(), type=SignedHead)


def encode(head: SignedHead) -> bytes:
    return msgspec.json.encode(head) + b"\n"


# ---- signed tree heads (v2: the Merkle root as well as the head) ------------------------------

TREE_HEAD_FORMAT_VERSION = "ledger-tree-head-v1"


def tree_head_bytes(tree_size: int, root_hash: str, digest: str, signed_at: str) -> bytes:
    """What a tree head's signature covers: a version line (so that neither kind of signature
    passes for the other), then the tree size, the hex Merkle root, the hex hash of the entry at
    position `tree_size` and the signing time, one per line, ASCII, each line ending in \\n."""
    return f"{TREE_HEAD_FORMAT_VERSION}\n{tree_size}\n{root_hash}\n{digest}\n{signed_at}\n".encode("ascii")


def sign_tree_head(key: Ed25519PrivateKey, *, tree_size: int, root_hash: str, digest: str, signed_at: str) -> tuple[str, str]:
    """(public key, signature), both hex."""
    return public_key_hex(key), key.sign(tree_head_bytes(tree_size, root_hash, digest, signed_at)).hex()


def verify_tree_head(*, tree_size: int, root_hash: str, digest: str, signed_at: str, signature: str,
                     trusted_public_key: str) -> bool:
    """True when the pinned key signed this tree head (the key stored beside it is only a label)."""
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(trusted_public_key))
    try:
        public_key.verify(bytes.fromhex(signature), tree_head_bytes(tree_size, root_hash, digest, signed_at))
    except (InvalidSignature, ValueError):
        return False
    return True
