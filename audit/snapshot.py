"""The I/O around the replay: one read-only snapshot as the auditor role, read through cursors.

The journal is streamed through server-side cursors; the write model, the projection and the
head row are handed to `Replay.finish`.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable

import msgspec
import psycopg
from psycopg.types.string import TextLoader

from proofs import signing
from ledger import collector, db, domain, store
from proofs import store as tree_store
from projector import store as projections
from ledger.store import audit as reads
from audit import pool
from audit.report import AuditReport, PROGRESS_EVERY_ENTRIES, Progress
from audit.replay import Original, Replay, Start
from audit.summary import Summary
from audit.tree_check import TreeCheck
from schemas import Verification


# ---- the I/O: one snapshot, one cursor ------------------------------------------------------


async def run_audit(
    database_url: str,
    *,
    from_position: int = 0,
    signed_head: signing.SignedHead | None = None,
    public_key: str | None = None,
    projector_name: str = projections.DEFAULT_NAME,
    progress: Progress | None = None,
    workers: int | None = None,
) -> AuditReport:
    """Replay the journal after `from_position` (trusting the state there) and check it all. A
    `signed_head` (a `ledger checkpoint` file) counts only when signed by `public_key`, the key the
    auditor pinned. `workers`:
    processes that read and check the journal (`pool.default_workers` when None; 0 reads here)."""
    assert from_position >= 0, "from_position must not be negative"
    dialect = await db.detect_dialect(database_url)
    started = time.monotonic()
    with collector.paused():
        async with await _connect(database_url, dialect) as conn:
            # Read-only: nothing to commit, and closing the connection ends the snapshot.
            token = await reads.open_shared_snapshot(conn, dialect)
            last = await reads.last_entry_position(conn)
            accounts = await store.account_kinds(conn)
            reader = pool.Reader(
                conn, database_url=database_url, dialect=dialect, token=token,
                workers=pool.default_workers(last - from_position) if workers is None else workers,
                account_ids={str(account_id): account_id for account_id in accounts}, accounts=accounts,
            )
            try:
                async with await _joined(database_url, dialect, token) as text_conn:
                    replay, head_position, projector_position, tree_check = await _replay(
                        conn, text_conn, reader, accounts, from_position=from_position, last=last,
                        signed_head=signed_head, public_key=public_key, projector_name=projector_name, progress=progress,
                    )
            finally:
                reader.close()
    seconds = time.monotonic() - started
    return AuditReport(
        ok=replay.findings.first_failure() is None,
        from_position=from_position,
        last_position=replay.position,
        head_position=head_position,
        entries=replay.entries,
        accounts=replay.account_count,
        projector_position=projector_position,
        checkpoint_position=signed_head.position if signed_head else None,
        seconds=round(seconds, 3),
        entries_per_s=round(replay.entries / seconds, 1) if seconds > 0 else 0.0,
        checks=replay.findings.results(),
        first_failure=replay.findings.first_failure(),
        tree_size=tree_check.stored_size if tree_check else 0,
        tree_heads=tree_check.heads_checked if tree_check else 0,
        tree_head_signatures=tree_check.signatures if tree_check else "none",
    )


class _InOrder:
    """A stream in position order, read one item ahead: the items up to a position, taken in
    turn. Items taken and not used can be given back, to be taken again first."""

    def __init__(self, items: AsyncIterator, position_of: Callable[[object], int]) -> None:
        self._items = aiter(items)
        self._position_of = position_of
        self._next: object | None = None
        self._given_back: collections.deque = collections.deque()

    async def start(self) -> _InOrder:
        self._next = await anext(self._items, None)
        return self

    async def through(self, position: int) -> list:
        """The items at or before `position` not taken yet, in order."""
        taken = []
        given_back, position_of = self._given_back, self._position_of
        while given_back and position_of(given_back[0]) <= position:
            taken.append(given_back.popleft())
        if given_back:
            return taken
        while self._next is not None and position_of(self._next) <= position:
            taken.append(self._next)
            self._next = await anext(self._items, None)
        return taken

    def give_back(self, items: list) -> None:
        self._given_back.extendleft(reversed(items))


async def _connect(database_url: str, dialect) -> psycopg.AsyncConnection:
    return await db.connect(database_url, dialect=dialect)


async def _joined(database_url: str, dialect, token: str) -> psycopg.AsyncConnection:
    """A second connection in the audit's snapshot that reads UUIDs and timestamps as text: the
    verifications, half a journal's entries, are compared with what the workers send as text, and
    making objects of them was most of the audit's own time."""
    conn = await _connect(database_url, dialect)
    try:
        await reads.join_shared_snapshot(conn, dialect, token)
    except BaseException:
        await conn.close()
        raise
    for type_name in ("uuid", "timestamptz"):
        conn.adapters.register_loader(type_name, TextLoader)
    return conn


async def _replay(
    conn: psycopg.AsyncConnection,
    text_conn: psycopg.AsyncConnection,
    reader: pool.Reader,
    accounts: dict,
    *,
    from_position: int,
    last: int,
    signed_head: signing.SignedHead | None,
    public_key: str | None,
    projector_name: str,
    progress: Progress | None,
) -> tuple[Replay, int, int, TreeCheck | None]:
    head = await store.journal_head(conn)
    projector_position = await projections.cursor(conn, projector_name)
    hold_rows = await store.holds_for_audit(conn)
    replay, signed = await _new_replay(conn, accounts, from_position=from_position, projector_position=projector_position,
                                       hold_rows=hold_rows, signed_head=signed_head, public_key=public_key)
    walk = await _Walk.open(conn, text_conn, replay, from_position=from_position, public_key=public_key,
                            progress=progress, head_position=head.position)
    cuts = {projector_position} | ({signed[0]} if signed else set())
    async for item in reader.ranges(after=from_position, upto=last, cuts=cuts, projector_position=projector_position,
                                    hashes_upto=walk.hashes_upto):
        if not isinstance(item, Summary):
            await walk.feed(item)
        elif not await walk.go_past(item):
            await walk.feed(await reader.page(item.after, item.upto))  # the replay locates what is wrong
    await walk.finish(conn)
    replay.finish(
        head=(head.position, head.hash),
        write_model=await store.write_model_balances(conn),
        projected=await projections.balances(conn),
        orphan_position=await store.first_orphan_posting(conn, from_position),
        refund_totals=await store.refund_totals(conn),
        holds=hold_rows,
        account_controls=await store.account_controls(conn),
    )
    return replay, head.position, projector_position, walk.tree_check


async def _new_replay(
    conn: psycopg.AsyncConnection, accounts: dict, *, from_position: int, projector_position: int,
    hold_rows: list[domain.HoldState], signed_head: signing.SignedHead | None, public_key: str | None,
) -> tuple[Replay, tuple[int, str] | None]:
    """The replay at its start, with what it cannot use already recorded; and the signed
    (position, hash) it proves, when the signed head is usable."""
    start, start_missing = await _start(conn, from_position)
    at_projector = None
    if projector_position < from_position:
        at_projector = await store.balances_from_postings(conn, projector_position)
    unusable = _unusable_signed_head(signed_head, from_position, public_key) if signed_head else None
    signed = (signed_head.position, signed_head.hash) if signed_head and not unusable else None
    replay = Replay(
        accounts, start=_with_holds(start, hold_rows), projector_position=projector_position,
        balances_at_projector=at_projector, signed=signed,
        hold_expiries={hold.id: hold.expires_at for hold in hold_rows},
    )
    if start_missing:
        replay.findings.record("contiguous", from_position, f"there is no entry at --from position {from_position}")
    if signed_head and unusable:
        replay.findings.record("checkpoint", signed_head.position, unusable)
    return replay, signed


@dataclasses.dataclass(slots=True)
class _Walk:
    """The journal fed to the replay in position order, entry by entry or a summary at a time,
    with what is walked alongside it, also in position order, so that memory stays bounded by
    a page of each however long the journal is: the verifications (read on the text
    connection, their UUIDs as text: `_with_uuids` makes them objects where entries are fed),
    the stored tree nodes and the originals of the refunds."""

    replay: Replay
    verifications: _InOrder
    nodes: _InOrder
    originals: _InOrder
    tree_check: TreeCheck | None
    stored_size: int
    hashes_upto: int  # the summaries of ranges that start before it carry every entry's hash
    progress: Progress | None
    head_position: int

    @classmethod
    async def open(
        cls, conn: psycopg.AsyncConnection, text_conn: psycopg.AsyncConnection, replay: Replay, *,
        from_position: int, public_key: str | None, progress: Progress | None, head_position: int,
    ) -> _Walk:
        verifications = await _InOrder(projections.stream_verifications(text_conn, from_position), _position).start()
        # The tree is recomputed from the first leaf, so only a replay from the start checks it.
        tree_check, stored_size, hashes_upto = None, await tree_store.tree_size(conn), 0
        if from_position == 0:
            heads = await tree_store.tree_heads(conn)
            tree_check = TreeCheck(replay.findings, stored_size=stored_size, heads=heads, public_key=public_key)
            hashes_upto = max([stored_size] + [head.tree_size for head in heads])
        nodes = await _InOrder(tree_store.stream_nodes(conn, after=from_position, upto=stored_size if tree_check else 0),
                               _first).start()
        originals = await _InOrder(store.refund_originals(conn, from_position), _first).start()
        return cls(replay, verifications, nodes, originals, tree_check, stored_size, hashes_upto, progress,
                   head_position)

    async def feed(self, page: pool.Page) -> None:
        entries, mismatches = page
        for entry, balances_after in entries:
            found = await self.originals.through(entry.position)
            original = Original(*found[-1][1:]) if found and found[-1][0] == entry.position and found[-1][1] is not None else None
            self.replay.feed(entry, balances_after, original, mismatches.get(entry.position, entry.hash))
            await self._grow_tree(entry.position, entry.hash)
            rows = []
            for row in await self.verifications.through(entry.position):
                if row.position < entry.position:
                    self.replay.stray_verification(row)
                else:
                    rows.append(_with_uuids(row))
            self.replay.check_verifications(entry, rows)
            if self.progress is not None and entry.position % PROGRESS_EVERY_ENTRIES == 0:
                self.progress(entry.position, self.head_position)

    async def go_past(self, summary: Summary) -> bool:
        """Go past a range a worker summarized; False, with nothing taken, when the replay must
        feed it entry by entry instead."""
        rows = await self.verifications.through(summary.upto)
        if not (self.replay.verified_as_summarized(summary, rows) and self.replay.feed_summary(summary)):
            self.verifications.give_back(rows)
            return False
        for position, digest in enumerate(summary.hashes or (), summary.after + 1):
            await self._grow_tree(position, digest)
        if self.progress is not None:
            self.progress(summary.upto, self.head_position)
        return True

    async def _grow_tree(self, position: int, digest: str) -> None:
        if self.tree_check is not None and self.tree_check.wants(position):
            stored = await self.nodes.through(position)
            self.tree_check.feed(position, digest, {node[1]: node[2] for node in stored})

    async def finish(self, conn: psycopg.AsyncConnection) -> None:
        """What is left past the last entry: stray verifications, stored subtrees beyond the tree."""
        for row in await self.verifications.through(_PAST_EVERY_POSITION):
            self.replay.stray_verification(row)
        if self.progress is not None:
            self.progress(self.replay.position, self.head_position)
        if self.tree_check is not None:
            self.tree_check.finish(self.replay.position, await tree_store.nodes_beyond(conn, self.stored_size))


_PAST_EVERY_POSITION = 2**63  # beyond any INT8 position


def _with_uuids(row: Verification) -> Verification:
    """A verification read with its UUIDs as text, as `check_verifications` compares it with an entry."""
    return msgspec.structs.replace(row, transfer_id=uuid.UUID(row.transfer_id),
                                   vendor_account_id=uuid.UUID(row.vendor_account_id),
                                   payer_account_id=uuid.UUID(row.payer_account_id))


def _position(row) -> int:
    return row.position


def _first(row: tuple) -> int:
    return row[0]


def _with_holds(start: Start, rows: list[domain.HoldState]) -> Start:
    """The trusted holds at `--from`: those placed at or before it, as they were there."""
    if start.position == 0:
        return start
    holds = {}
    for row in rows:
        if row.position <= start.position:
            open_there = row.closed_position is None or row.closed_position > start.position
            holds[row.id] = dataclasses.replace(
                row, status="pending", captured_amount=0, closed_position=None, transfer_id=None
            ) if open_there else row
    return dataclasses.replace(start, holds=holds)


async def _start(conn: psycopg.AsyncConnection, from_position: int) -> tuple[Start, bool]:
    """The trusted state at `--from`: its stored hash and the balances its postings imply.
    Returns whether the entry at that position is missing."""
    if from_position == 0:
        return Start(), False
    digest = await store.stored_hash(conn, from_position)
    balances = await store.balances_from_postings(conn, from_position)
    refunded = await store.refunded_up_to(conn, from_position)
    account_controls = await store.controls_up_to(conn, from_position)
    start = Start(from_position, digest or domain.ZERO_HASH, balances, refunded, controls=account_controls)
    return start, digest is None


def _unusable_signed_head(signed_head: signing.SignedHead, from_position: int, public_key: str | None) -> str | None:
    """Why the replay cannot prove this signed head, or None when it can."""
    if public_key is None:
        return "no public key is pinned, so the signature proves nothing (pass --public-key)"
    if signed_head.public_key != public_key:
        return f"signed by key {signed_head.public_key}, not by the pinned key {public_key}"
    if not signing.verify(signed_head, public_key):
        return "the signature does not verify"
    if signed_head.position <= from_position:
        return f"the checkpoint is not after --from {from_position}, so the replay cannot prove it"
    return None


