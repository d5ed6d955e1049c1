"""The processes the command line composes from sibling packages that never import each other.

The API process serves the web console too (`console`, under `/console/`), unless
`LEDGER_CONSOLE=0`: the console calls the API's routes over loopback, so the API never imports it
and it never imports the API; this is where the two meet.

The projector process hosts two followers of the journal: the projector (`projector.consumer`)
and, unless `LEDGER_TREE_FOLLOWER=0` leaves it to another projector process, the Merkle tree's
(`proofs.follower`). Each has its own cursor and pool; here they run side by side, and one that
ends (it only ends by failing) stops the other, so the process exits rather than half-running.
"""

from __future__ import annotations

import asyncio

from ledger.config import Settings
from ledger.tasks import cancel_all


async def api(settings: Settings) -> None:
    """`ledger api`: the HTTP API and, when on, the web console mounted onto it, until cancelled."""
    from api.app import serve

    await serve(settings, mounts=api_mounts(settings))


def api_mounts(settings: Settings) -> list:
    """What `ledger api` adds to the API's application: the console, unless LEDGER_CONSOLE=0."""
    if not settings.console.enabled:
        return []
    from console.app import mount

    key = console_public_key(settings)
    return [lambda app: mount(app, settings, public_key=key)]


def console_public_key(settings: Settings) -> str:
    """The key the console's in-browser verifier pins: LEDGER_CONSOLE_PUBLIC_KEY, else the public half
    of the signing key when this process can read it (one machine: `ledger dev`), else none. Never
    the key a tree head carries, which proves only that someone signed it."""
    from pathlib import Path

    from proofs import signing

    if settings.console.public_key:
        return signing.read_public_key(settings.console.public_key)
    path = Path(settings.proofs.signing_key)
    if not path.is_file():
        return ""
    return signing.public_key_hex(signing.load_or_create_key(path))


async def projector(settings: Settings, *, metrics_listener: bool = False) -> None:
    """`ledger projector`: the read models and, when on, the Merkle tree, until cancelled."""
    from projector import consumer
    from proofs import follower as tree_follower

    tasks = [asyncio.create_task(consumer.serve(settings, metrics_listener=metrics_listener), name="projector")]
    if settings.proofs.tree_follower:
        tasks.append(asyncio.create_task(tree_follower.serve(settings), name="tree-follower"))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a follower that failed: its error is the process's
    finally:
        await cancel_all(tasks)


async def projector_rebuild(settings: Settings) -> int:
    """`ledger projector rebuild`: the read models, then the Merkle tree, replayed from the journal
    (stop the projector first); returns the read models' position."""
    from projector import consumer
    from proofs import follower as tree_follower

    position = await consumer.rebuild_at(settings)
    await tree_follower.rebuild_at(settings)
    return position
