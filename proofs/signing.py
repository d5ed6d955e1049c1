"""Signed checkpoints: an Ed25519 signature over the journal head, kept outside the database.

Whoever can write the database can rewrite an entry and rehash every later one; the chain then
looks sound. A checkpoint signed before the rewrite cannot be forged afterwards, so
`ledger audit --checkpoint FILE` proves that the journal up to the signed position still hashes
to the signed hash. The signature covers `signed_bytes()`; the key never leaves its file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import msgspec
import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger import config, domain, store

SIGNED_FORMAT_VERSION = "ledger-checkpoint-v1"
KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700
EXIT_SIGNED = 0
EXIT_NOTHING_TO_SIGN = 1
EXIT_UNABLE = 2

_HEX64 = "^[0-9a-f]{64}$"


class SignedCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The checkpoint file: the head, the signer's raw public key and the signature, all hex."""

    position: Annotated[int, msgspec.Meta(ge=1)]
    hash: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    public_key: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    signature: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{128}$")]
    signed_at: str


class EmptyJournal(Exception):
    """There is no entry yet, so there is no history to vouch for."""


def signed_bytes(position: int, digest: str, signed_at: str) -> bytes:
    """What the signature covers: a version line, then the head and the time, one per line.
    The version line keeps a signature made for anything else from passing as a checkpoint."""
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


def sign(key: Ed25519PrivateKey, *, position: int, digest: str, signed_at: str) -> SignedCheckpoint:
    signature = key.sign(signed_bytes(position, digest, signed_at))
    return SignedCheckpoint(
        position=position, hash=digest, public_key=public_key_hex(key), signature=signature.hex(), signed_at=signed_at
    )


def verify(checkpoint: SignedCheckpoint, trusted_public_key: str) -> bool:
    """True when `trusted_public_key` (hex, pinned by the verifier: `ledger checkpoint
    --export-public-key` prints it) signed the file's head. The key written inside the file is
    only a label: whoever rewrote the database can sign a new file with a key of their own."""
    if checkpoint.public_key != trusted_public_key.strip().lower():
        return False
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(trusted_public_key.strip()))
    message = signed_bytes(checkpoint.position, checkpoint.hash, checkpoint.signed_at)
    try:
        public_key.verify(bytes.fromhex(checkpoint.signature), message)
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


def read_file(path: Path) -> SignedCheckpoint:
    """Raises OSError or msgspec.DecodeError/ValidationError when the file is not a checkpoint."""
    return msgspec.json.decode(path.read_bytes(), type=SignedCheckpoint)


def encode(checkpoint: SignedCheckpoint) -> bytes:
    return msgspec.json.encode(checkpoint) + b"\n"


async def take_checkpoint(database_url: str, key: Ed25519PrivateKey) -> SignedCheckpoint:
    """Sign the current head and record the signature in `signed_checkpoints`, as the auditor."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await store.use_auditor_role(conn)
        async with conn.transaction():
            head = await store.journal_head(conn)
            if head.position == 0:
                raise EmptyJournal()
            # A forked journal is not vouched for; a command may read the whole tail the tree lacks.
            await _fork().check_extension(conn, head.position, tail_max=head.position)
            signed_at = dt.datetime.now(dt.timezone.utc)
            checkpoint = sign(key, position=head.position, digest=head.hash, signed_at=domain.format_timestamp(signed_at))
            await store.insert_signed_checkpoint(
                conn, position=head.position, digest=head.hash, public_key=checkpoint.public_key,
                signature=checkpoint.signature, signed_at=signed_at,
            )
    return checkpoint


async def take_tree_head(database_url: str, key: Ed25519PrivateKey, *, tree_size: int):
    """Sign the Merkle tree head at `tree_size` and record it in `signed_tree_heads`, as the auditor."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await store.use_auditor_role(conn)
        return await _fork().sign_extension(conn, key, tree_size=tree_size, tail_max=tree_size)


def _fork():
    from proofs import fork  # it imports proofs.tree, which imports this module

    return fork


def main(settings: config.Settings, *, key_path: str, out: str | None, export_public_key: bool) -> int:
    """`ledger checkpoint`: 0 signed (or key printed), 1 nothing to sign yet, 2 could not run; an
    unreachable database is raised to the command line, which exits 3."""
    try:
        key = load_or_create_key(Path(key_path))
    except (OSError, ValueError) as error:
        print(f"ledger checkpoint: cannot use the key {key_path}: {error}", file=sys.stderr)
        return EXIT_UNABLE
    if export_public_key:
        print(public_key_hex(key))
        return EXIT_SIGNED
    try:
        checkpoint = asyncio.run(take_checkpoint(settings.database_url, key))
    except EmptyJournal:
        print("ledger checkpoint: the journal is empty, nothing to sign", file=sys.stderr)
        return EXIT_NOTHING_TO_SIGN
    except _fork().ForkedHistory as error:
        print(f"ledger checkpoint: refusing to sign a forked history: {error}", file=sys.stderr)
        return EXIT_UNABLE
    except psycopg.OperationalError:
        raise  # the command line reports an unreachable database: one line, exit 3
    except psycopg.Error as error:
        print(f"ledger checkpoint: cannot read the journal head: {str(error).strip().splitlines()[0]}",
              file=sys.stderr)
        return EXIT_UNABLE
    head = asyncio.run(take_tree_head(settings.database_url, key, tree_size=checkpoint.position))
    print(f"signed tree head {head.tree_size} root {head.root_hash}", file=sys.stderr)
    if out is None:
        sys.stdout.buffer.write(encode(checkpoint))
    else:
        Path(out).write_bytes(encode(checkpoint))
        print(f"signed position {checkpoint.position} ({checkpoint.hash}) into {out}", file=sys.stderr)
    return EXIT_SIGNED


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
