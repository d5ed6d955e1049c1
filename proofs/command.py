"""`ledger checkpoint`: sign the journal head and the Merkle tree head there, as the auditor.

The signed head is written to a file (`--out`, or stdout) and kept in `signed_checkpoints`; the
tree head at the same position is kept in `signed_tree_heads`.

Above `proofs.signing` (the keys and the signed bytes), `proofs.tree` (the root it signs) and
`proofs.fork` (only an extension of the last signed head is signed), so that none of those
imports its caller.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import config, db, domain, store
from ledger.exits import Exit
from proofs import fork, signing
from schemas import SignedTreeHead


class EmptyJournal(Exception):
    """There is no entry yet, so there is no history to vouch for."""


async def take_signed_head(database_url: str, key: Ed25519PrivateKey) -> signing.SignedHead:
    """Sign the current head and record the signature in `signed_checkpoints`, as the auditor."""
    async with await db.connect(database_url) as conn:
        await store.use_auditor_role(conn)
        async with conn.transaction():
            head = await store.journal_head(conn)
            if head.position == 0:
                raise EmptyJournal()
            # A forked journal is not vouched for; a command may read the whole tail the tree lacks.
            await fork.check_extension(conn, head.position, tail_max=head.position)
            signed_at = dt.datetime.now(dt.timezone.utc)
            signed = signing.sign(key, position=head.position, digest=head.hash,
                                  signed_at=domain.format_timestamp(signed_at))
            await store.insert_signed_head(
                conn, position=head.position, digest=head.hash, public_key=signed.public_key,
                signature=signed.signature, signed_at=signed_at,
            )
    return signed


async def take_tree_head(database_url: str, key: Ed25519PrivateKey, *, tree_size: int) -> SignedTreeHead | None:
    """Sign the Merkle tree head at `tree_size` and record it in `signed_tree_heads`, as the auditor,
    when it extends the last signed head (`fork.sign_extension`)."""
    async with await db.connect(database_url) as conn:
        await store.use_auditor_role(conn)
        return await fork.sign_extension(conn, key, tree_size=tree_size, tail_max=tree_size)


def main(settings: config.Settings, *, key_path: str, out: str | None, export_public_key: bool) -> int:
    """`ledger checkpoint`: 0 signed (or key printed), 1 nothing to sign yet, 2 could not run; an
    unreachable database is raised to the command line, which exits 3."""
    try:
        key = signing.load_or_create_key(Path(key_path))
    except (OSError, ValueError) as error:
        print(f"ledger checkpoint: cannot use the key {key_path}: {error}", file=sys.stderr)
        return Exit.USAGE
    if export_public_key:
        print(signing.public_key_hex(key))
        return Exit.OK
    try:
        signed = asyncio.run(take_signed_head(settings.database.url, key))
    except EmptyJournal:
        print("ledger checkpoint: the journal is empty, nothing to sign", file=sys.stderr)
        return Exit.CHECK_FAILED
    except fork.ForkedHistory as error:
        print(f"ledger checkpoint: refusing to sign a forked history: {error}", file=sys.stderr)
        return Exit.USAGE
    except psycopg.OperationalError:
        raise  # the command line reports an unreachable database: one line, exit 3
    except psycopg.Error as error:
        print(f"ledger checkpoint: cannot read the journal head: {str(error).strip().splitlines()[0]}",
              file=sys.stderr)
        return Exit.USAGE
    head = asyncio.run(take_tree_head(settings.database.url, key, tree_size=signed.position))
    print(f"signed tree head {head.tree_size} root {head.root_hash}", file=sys.stderr)
    if out is None:
        sys.stdout.buffer.write(signing.encode(signed))
    else:
        Path(out).write_bytes(signing.encode(signed))
        print(f"signed position {signed.position} ({signed.hash}) into {out}", file=sys.stderr)
    return Exit.OK
