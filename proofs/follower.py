"""The Merkle tree's follower of the journal: appends the complete subtrees, signs tree heads.

The tree is kept by a follower of its own, not by the projector's apply transaction: its cursor is
the stored tree size (`merkle_state.tree_size`), it reads only `(position, hash)` from the journal
and needs no event. Each step locks the cursor, reads up to `PAGE_ENTRIES_MAX` hashes after it,
appends them to the frontier (the O(log n) complete subtrees of the stored size, read back from
`merkle_nodes` and then kept between steps) and writes every subtree they complete, with the new
size, in one transaction. The proofs (`proofs.tree`) hash on the fly the tail it has not reached.

The projector process runs it beside the projector (`cli.processes`), on a pool of its own whose
commits wait for the WAL flush: it signs tree heads that auditors keep, each only when it extends
the last one signed (`proofs.fork`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple

from nats.aio.msg import Msg

from ledger import db, store
from ledger.config import Settings
from ledger.follower import JournalFollower
from proofs import fork, merkle, signing
from proofs import store as tree_store
from proofs.tree import PAGE_ENTRIES_MAX, TreeBehind, known_nodes

log = logging.getLogger("proofs.follower")

# Without doorbells the follower looks this often: the proofs hash the tail it has not reached, so
# a tenth of a second behind costs them little, and steps of more entries cost the write path less
# per entry (a look costs ~0.8 ms of CPU).
POLL_S = 0.1


class Leaf(NamedTuple):
    """What the tree reads of a journal entry."""

    position: int
    hash: str


class TreeFollower(JournalFollower):
    """Follows the journal by polling (`POLL_S`); signs the tree head every `sign_interval_s`
    (0: never) with the key at `key_path`, when the tree has grown since the last signature."""

    poll_s = POLL_S

    def __init__(self, pool, *, sign_interval_s: int = 0, key_path: str | None = None,
                 page_max: int = PAGE_ENTRIES_MAX) -> None:
        super().__init__(name="tree follower", pool=pool, log=log)
        self.page_max = page_max
        self._interval_s = sign_interval_s
        self._key = signing.load_or_create_key(Path(key_path)) if sign_interval_s and key_path else None
        self.forked = False  # the last check found the tree not an extension of the signed head
        self._next_sign = time.monotonic()
        self.frontier: merkle.Frontier | None = None  # kept between steps: not read back each time

    async def open_cursor(self, conn) -> int:
        return await tree_store.tree_size(conn)

    async def lock_cursor(self, conn) -> int:
        return await tree_store.lock_cursor(conn)

    async def read_page(self, conn, after: int) -> list[Leaf]:
        return [Leaf(*row) for row in await tree_store.journal_hashes(conn, after=after, limit=self.page_max)]

    async def write(self, conn, run: list[Leaf]) -> None:
        size = run[0].position - 1
        if self.frontier is None or self.frontier.size != size:
            self.frontier = merkle.Frontier.of(size, await known_nodes(conn, merkle.root_keys(size)))
        completed = [node for leaf in run for node in self.frontier.append(merkle.entry_leaf(leaf.hash))
                     if merkle.is_stored(node[0])]
        await tree_store.insert_nodes(conn, completed)
        await tree_store.move_cursor(conn, self.frontier.size)

    def abandoned(self) -> None:
        self.frontier = None  # it may hold leaves of a step that did not commit

    async def round(self, doorbells: list[Msg]) -> None:
        async with self._pool.connection() as conn:
            behind = await tree_store.entries_behind(conn)  # one cheap read while idle
        if behind > 0:
            await self.follow()
        if self._key is not None and time.monotonic() >= self._next_sign:
            await self._sign()

    async def _sign(self) -> None:
        """Sign the stored tree when it grew past the last signed head and extends it (`proofs.fork`);
        a tree that does not is never signed, however long it stays so: checked again each interval."""
        self._next_sign = time.monotonic() + self._interval_s
        async with self._pool.connection() as conn:
            size = await tree_store.tree_size(conn)
            try:
                await fork.sign_extension(conn, self._key, tree_size=size, newer_only=True)
            except fork.ForkedHistory as error:
                if not self.forked:
                    log.error("tree heads are no longer signed: %s", error)
                self.forked = True
                return
            except TreeBehind:
                return  # the stored tree is far behind the last signed head (a rebuild): next time
        if self.forked:
            log.warning("the journal's tree extends the last signed head again: signing resumes")
        self.forked = False


async def append_page(
    conn, *, limit: int = PAGE_ENTRIES_MAX, frontier: merkle.Frontier | None = None
) -> tuple[int, merkle.Frontier | None]:
    """One step on `conn`: append the next journal entries (at most `limit`) and store the subtrees
    they complete; returns how many were appended and the frontier at the new size. `frontier` (the
    one a previous call returned) saves reading it back; it is changed in place, so after a failure
    the caller must drop it."""
    follower = TreeFollower(None, page_max=limit)
    follower.frontier = frontier
    run, _ = await follower.step(conn)
    return len(run), follower.frontier


async def catch_up(conn) -> int:
    """Append pages until the tree reaches the journal's end; returns the tree size."""
    frontier = None
    while True:
        appended, frontier = await append_page(conn, frontier=frontier)
        if appended < PAGE_ENTRIES_MAX:
            return await tree_store.tree_size(conn)


async def rebuild(conn) -> int:
    """Forget the tree and replay it from the journal (derived data, like the read models)."""
    async with conn.transaction():
        await tree_store.reset_tree(conn)
    return await catch_up(conn)


def _pool(settings: Settings, **options):
    return db.make_pool(settings.database.url, role=store.PROJECTOR_ROLE, size_max=1, name="tree",
                        timeouts=db.timeouts_from(settings.database), **options)


async def rebuild_at(settings: Settings) -> int:
    """`ledger projector rebuild`, the tree's part: `rebuild` on a connection of its own."""
    pool = _pool(settings)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            return await rebuild(conn)
    finally:
        await pool.close()


async def serve(settings: Settings) -> None:
    """Follow the journal until cancelled, on a pool of its own (durable commits)."""
    pool = _pool(settings, dialect=await db.wait_for_dialect(settings.database.url))
    await pool.open(wait=True)
    try:
        await TreeFollower(pool, sign_interval_s=settings.proofs.sign_interval_s,
                           key_path=settings.proofs.signing_key).run()
    finally:
        await pool.close()
