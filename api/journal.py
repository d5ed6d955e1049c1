"""Handlers of the journal: its export and head, the Merkle proofs, and the probes."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

import schemas
from api.framework import ANSWER_STARTED, NDJSON, Call, JournalQuery, json_response
from api.problems import ApiError
from ledger import store
from proofs import merkle
from proofs import tree
from proofs import store as tree_store


# ---- the journal ----------------------------------------------------------------------------

JOURNAL_PAGE_ROWS = 500


async def get_journal(services, call: Call) -> web.StreamResponse:
    """Stream NDJSON page by page, so memory does not grow with `limit`."""
    query: JournalQuery = call.query
    response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
    await response.prepare(call.request)
    call.request[ANSWER_STARTED] = True  # a failure from here on cuts the connection
    after, left = query.after, query.limit
    encoder = msgspec.json.Encoder()
    while left > 0:
        async with services.pool.connection() as conn:
            entries = await store.entries_after(conn, after, min(left, JOURNAL_PAGE_ROWS))
        if not entries:
            break
        buffer = bytearray()
        for entry in entries:
            encoder.encode_into(entry, buffer, len(buffer))
            buffer.extend(b"\n")
        await response.write(bytes(buffer))
        after, left = entries[-1].position, left - len(entries)
    await response.write_eof()
    return response


async def get_journal_head(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        head = await store.journal_head(conn)
    return json_response(head)


# ---- proofs: the journal as a Merkle tree ---------------------------------------------------

TreeSize = Annotated[int, msgspec.Meta(ge=1, le=schemas.POSITION_MAX)]


class TreeQuery(msgspec.Struct, forbid_unknown_fields=True):
    tree_size: TreeSize | msgspec.UnsetType = msgspec.UNSET


class InclusionQuery(msgspec.Struct, forbid_unknown_fields=True):
    position: TreeSize
    tree_size: TreeSize | msgspec.UnsetType = msgspec.UNSET


class ConsistencyQuery(msgspec.Struct, forbid_unknown_fields=True):
    from_size: TreeSize
    to_size: TreeSize | msgspec.UnsetType = msgspec.UNSET


def _tree_size(asked: int | msgspec.UnsetType, head: int) -> int:
    """The asked size, or the journal head; past the head is a 422."""
    if asked is msgspec.UNSET:
        return head
    if asked > head:
        raise ApiError("tree_size_out_of_range", f"tree size {asked} is past the journal head {head}")
    return asked


async def _tree_nodes(conn, keys: set, size: int) -> dict:
    try:
        return await tree.read_nodes(conn, keys, size)
    except tree.TreeBehind as error:
        raise ApiError("tree_behind", str(error)) from None


async def get_tree(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        size = _tree_size(call.query.tree_size, (await store.journal_head(conn)).position)
        nodes = await _tree_nodes(conn, merkle.root_keys(size), size)
    return json_response(schemas.TreeHead(tree_size=size, root_hash=merkle.root(size, nodes).hex()))


async def get_inclusion_proof(services, call: Call) -> web.Response:
    """A client or vendor proves only entries that touch an account it owns (the route's
    ownership, `owners.entry_at`); admin and auditor any position, up to the tree's size."""
    query: InclusionQuery = call.query
    async with services.pool.connection() as conn:
        size = _tree_size(query.tree_size, (await store.journal_head(conn)).position)
        if query.position > size:
            raise ApiError("position_out_of_range", f"position {query.position} is past the tree size {size}")
        index = query.position - 1
        nodes = await _tree_nodes(conn, merkle.inclusion_keys(index, size), size)
    return json_response(schemas.InclusionProof(
        position=query.position, tree_size=size, leaf_hash=nodes[(0, index)].hex(),
        audit_path=[digest.hex() for digest in merkle.inclusion_proof(index, size, nodes)],
    ))


async def get_consistency_proof(services, call: Call) -> web.Response:
    query: ConsistencyQuery = call.query
    async with services.pool.connection() as conn:
        to_size = _tree_size(query.to_size, (await store.journal_head(conn)).position)
        if query.from_size > to_size:
            raise ApiError("tree_size_out_of_range", f"from_size {query.from_size} is past the tree size {to_size}")
        nodes = await _tree_nodes(conn, merkle.consistency_keys(query.from_size, to_size), to_size)
    proof = merkle.consistency_proof(query.from_size, to_size, nodes)
    return json_response(schemas.ConsistencyProof(from_size=query.from_size, to_size=to_size,
                                                  proof=[digest.hex() for digest in proof]))


async def get_latest_checkpoint(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        row = await tree_store.latest_tree_head(conn)
    if row is None:
        raise ApiError("not_found", "no tree head has been signed yet")
    return json_response(row)


# ---- operations -----------------------------------------------------------------------------


async def healthz(services, call: Call) -> web.Response:
    return json_response(schemas.Health(status="ok"))


async def readyz(services, call: Call) -> web.Response:
    """From the last background probe (once a second): a probe request takes no connection.
    Ready is the database and NATS; `tree_heads` says whether tree heads are still signed (a
    forked journal is reported, while the service keeps answering its last good head)."""
    checks = {"database": services.readiness.database, "nats": "ok" if services.bus.connected else "down"}
    ready = all(v == "ok" for v in checks.values())
    checks["tree_heads"] = services.readiness.tree_heads
    return json_response(schemas.Health(status="ready" if ready else "not_ready", checks=checks), status=200 if ready else 503)


