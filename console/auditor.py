"""The auditor's pages: journal head, signed tree heads, consistency checked in the browser, export."""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web

import schemas
from console.upstream import ApiFailure
from console.web import public_key, render, session_of, upstream

EXPORT_ENTRIES_MAX = schemas.JOURNAL_LIMIT_MAX  # one download, the API's page; its route pages further


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/audit", audit)
    router.add_get("/consistency.json", consistency)
    router.add_get("/audit/journal.ndjson", export)
    router.add_get("/audit/head.json", latest_head)


async def _latest_signed(request: web.Request) -> dict | None:
    try:
        return await upstream(request).get("/v1/journal/checkpoints/latest", session_of(request).token)
    except ApiFailure as failure:
        if failure.status != 404:
            raise
        return None


async def audit(request: web.Request) -> web.Response:
    head = await upstream(request).get("/v1/journal/head", session_of(request).token)
    return render(request, "audit.html", head=head, signed=await _latest_signed(request),
                  public_key=public_key(request), export_max=EXPORT_ENTRIES_MAX)


async def latest_head(request: web.Request) -> web.Response:
    """The latest signed tree head as a file to keep: the `first` of a later consistency check."""
    signed = await _latest_signed(request)
    if signed is None:
        raise web.HTTPNotFound()
    return web.json_response(signed, headers={"Content-Disposition": "attachment"})


def _earlier_head(text: str, latest: dict) -> dict | None:
    """The pasted head, if it is an object with a tree size within the latest head's; whether it is
    signed by the pinned key is for the browser to check, not for this server to vouch for."""
    try:
        head = json.loads(text)
    except ValueError:
        return None
    size = head.get("tree_size") if isinstance(head, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= latest["tree_size"]:
        return None
    return head


async def consistency(request: web.Request) -> web.Response:
    """`first`, a signed tree head the auditor kept; `second`, the latest signed tree head; and the
    API's RFC 9162 consistency proof between their sizes."""
    token, latest = session_of(request).token, await _latest_signed(request)
    if latest is None:
        return web.json_response({"detail": "No tree head has been signed yet."}, status=409)
    first = _earlier_head(request.query.get("first", ""), latest)
    if first is None:
        return web.json_response({"detail": "Paste a signed tree head saved from this page (JSON with a tree_size"
                                            f" between 1 and {latest['tree_size']})."}, status=400)
    proof = await upstream(request).get("/v1/journal/proofs/consistency", token, from_size=first["tree_size"],
                                        to_size=latest["tree_size"])
    return web.json_response({"first": first, "second": latest, "proof": proof})


async def export(request: web.Request) -> web.StreamResponse:
    """The API's NDJSON export, passed through in chunks under the session's token (which a link
    could not carry): the download never holds the journal in memory."""
    http = upstream(request)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Content-Disposition": 'attachment; filename="journal.ndjson"'})
    async with http.stream("/v1/journal", session_of(request).token, limit=EXPORT_ENTRIES_MAX) as chunks:
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as error:
            # The API's answer broke off after ours began: a cut connection, never a short file that
            # looks whole.
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("the journal export was cut short") from error
    await response.write_eof()
    return response
