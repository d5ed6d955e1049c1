"""The processes the command line composes from sibling packages that never import each other.

The projector process hosts two followers of the journal: the projector (`projector.consumer`)
and, unless `LEDGER_TREE_FOLLOWER=0` leaves it to another projector process, the Merkle tree's
(`proofs.follower`). Each has its own cursor and pool; here they run side by side, and one that
ends (it only ends by failing) stops the other, so the process exits rather than half-running.
"""

from __future__ import annotations

import asyncio

from ledger.config import Settings


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
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def projector_rebuild(settings: Settings) -> int:
    """`ledger projector rebuild`: the read models, then the Merkle tree, replayed from the journal
    (stop the projector first); returns the read models' position."""
    from projector import consumer
    from proofs import follower as tree_follower

    position = await consumer.rebuild_at(settings)
    await tree_follower.rebuild_at(settings)
    return position
