"""The I/O around the replay: one read-only snapshot as the auditor role, streamed through
server-side cursors, with the write model, the projection and the head row handed to
`Replay.finish`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator

import psycopg

from ledger import checkpoint as signing
from ledger import db, domain, store, tree_store
from projector import store as projections
from ledger.store import audit as reads
from ledger.audit import pool
from ledger.audit.report import AuditReport, PROGRESS_EVERY_ENTRIES, Progress
from ledger.audit.replay import Original, Replay, Start
from ledger.audit.tree_check import TreeCheck


# ---- the I/O: one snapshot, one cursor ------------------------------------------------------


async def run_audit(
    database_url: str,
    *,
    from_position: int = 0,
    checkpoint: signing.SignedCheckpoint | None = None,
    public_key: str | None = None,
    projector_name: str = projections.DEFAULT_NAME,
    progress: Progress | None = None,
    workers: int | None = None,
) -> AuditReport:
    """Replay the journal after `from_position` (trusting the state there) and check it all. A
    `checkpoint` counts only when signed by `public_key`, the key the auditor pinned. `workers`:
    processes that read and hash the journal (`pool.default_workers` when None; 0 reads here)."""
    assert from_position >= 0, "from_position must not be negative"
    dialect = await db.detect_dialect(database_url)
    started = time.monotonic()
    with _collector_paused():
        async with await dialect.connection_class.connect(
            database_url, autocommit=True, connect_timeout=db.CONNECT_TIMEOUT_S
        ) as conn:
            # Read-only: nothing to commit, and closing the connection ends the snapshot.
            token = await reads.open_shared_snapshot(conn, dialect)
            last = await reads.last_entry_position(conn)
            entries = functools.partial(
                pool.pages, conn, database_url=database_url, dialect=dialect, token=token, after=from_position, upto=last,
                workers=pool.default_workers(last - from_position) if workers is None else workers,
                account_ids={str(account_id): account_id for account_id in await store.account_kinds(conn)},
            )
            replay, head_position, projector_position, tree_check = await _replay(
                conn, entries, from_position=from_position, checkpoint=checkpoint, public_key=public_key,
                projector_name=projector_name, progress=progress,
            )
    seconds = time.monotonic() - started
    return AuditReport(
        ok=replay.findings.first_failure() is None,
        from_position=from_position,
        last_position=replay.position,
        head_position=head_position,
        entries=replay.entries,
        accounts=replay.account_count,
        projector_position=projector_position,
        checkpoint_position=checkpoint.position if checkpoint else None,
        seconds=round(seconds, 3),
        entries_per_s=round(replay.entries / seconds, 1) if seconds > 0 else 0.0,
        checks=replay.findings.results(),
        first_failure=replay.findings.first_failure(),
        tree_size=tree_check.stored_size if tree_check else 0,
        tree_heads=tree_check.heads_checked if tree_check else 0,
        tree_head_signatures=tree_check.signatures if tree_check else "none",
    )


async def _replay(
    conn: psycopg.AsyncConnection,
    entry_pages: Callable[[], AsyncIterator[pool.Page]],
    *,
    from_position: int,
    checkpoint: signing.SignedCheckpoint | None,
    public_key: str | None,
    projector_name: str,
    progress: Progress | None,
) -> tuple[Replay, int, int, TreeCheck | None]:
    accounts = await store.account_kinds(conn)
    head = await store.journal_head(conn)
    head_position, head_hash = head.position, head.hash
    projector_position = await projections.checkpoint(conn, projector_name)
    start, start_missing = await _start(conn, from_position)
    at_projector = None
    if projector_position < from_position:
        at_projector = await store.balances_from_postings(conn, projector_position)
    unusable = _unusable_checkpoint(checkpoint, from_position, public_key) if checkpoint else None
    hold_rows = await store.holds_for_audit(conn)
    replay = Replay(
        accounts, start=_with_holds(start, hold_rows), projector_position=projector_position,
        balances_at_projector=at_projector,
        signed=(checkpoint.position, checkpoint.hash) if checkpoint and not unusable else None,
        hold_expiries={hold.id: hold.expires_at for hold in hold_rows},
    )
    if start_missing:
        replay.findings.record("contiguous", from_position, f"there is no entry at --from position {from_position}")
    if checkpoint and unusable:
        replay.findings.record("checkpoint", checkpoint.position, unusable)
    # The verifications are walked alongside the journal, both in position order, so memory
    # stays bounded by a page of each however long the journal is.
    verifications = aiter(projections.stream_verifications(conn, from_position))
    pending = await anext(verifications, None)
    # The tree is recomputed from the first leaf, so only a replay from the start checks it.
    tree_check, stored_size = None, await tree_store.tree_size(conn)
    if from_position == 0:
        tree_check = TreeCheck(replay.findings, stored_size=stored_size, heads=await tree_store.tree_heads(conn),
                               public_key=public_key)
    nodes = aiter(tree_store.stream_nodes(conn, after=from_position, upto=stored_size if tree_check else 0))
    node = await anext(nodes, None)
    # The originals of the refunds, walked alongside too (in the refunds' position order).
    originals = aiter(store.refund_originals(conn, from_position))
    next_original = await anext(originals, None)
    async for page, mismatches in entry_pages():
        for entry, balances_after in page:
            original = None
            if next_original is not None and next_original[0] == entry.position:
                original = Original(*next_original[1:]) if next_original[1] is not None else None
                next_original = await anext(originals, None)
            replay.feed(entry, balances_after, original, mismatches.get(entry.position, entry.hash))
            if tree_check is not None and tree_check.wants(entry.position):
                stored = {}
                while node is not None and node[0] <= entry.position:
                    stored[node[1]] = node[2]
                    node = await anext(nodes, None)
                tree_check.feed(entry.position, entry.hash, stored)
            rows = []
            while pending is not None and pending.position <= entry.position:
                if pending.position < entry.position:
                    replay.stray_verification(pending)
                else:
                    rows.append(pending)
                pending = await anext(verifications, None)
            replay.check_verifications(entry, rows)
            if progress is not None and entry.position % PROGRESS_EVERY_ENTRIES == 0:
                progress(entry.position, head_position)
    while pending is not None:
        replay.stray_verification(pending)
        pending = await anext(verifications, None)
    if progress is not None:
        progress(replay.position, head_position)
    if tree_check is not None:
        tree_check.finish(replay.position, await tree_store.nodes_beyond(conn, stored_size))
    replay.finish(
        head=(head_position, head_hash),
        write_model=await store.write_model_balances(conn),
        projected=await projections.balances(conn),
        orphan_position=await store.first_orphan_posting(conn, from_position),
        refund_totals=await store.refund_totals(conn),
        holds=hold_rows,
    )
    return replay, head_position, projector_position, tree_check


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the replay, as it was after. The replay makes no
    reference cycles, but every 700 allocations the collector rescans the page of entries alive:
    measured, 40% of the replay's CPU. Worker processes keep it off for good (`pool._join`)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
    return Start(from_position, digest or domain.ZERO_HASH, balances, refunded), digest is None


def _unusable_checkpoint(
    checkpoint: signing.SignedCheckpoint, from_position: int, public_key: str | None
) -> str | None:
    """Why the replay cannot prove this checkpoint, or None when it can."""
    if public_key is None:
        return "no public key is pinned, so the signature proves nothing (pass --public-key)"
    if checkpoint.public_key != public_key:
        return f"signed by key {checkpoint.public_key}, not by the pinned key {public_key}"
    if not signing.verify(checkpoint, public_key):
        return "the signature does not verify"
    if checkpoint.position <= from_position:
        return f"the checkpoint is not after --from {from_position}, so the replay cannot prove it"
    return None


