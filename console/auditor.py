"""The auditor's pages: journal head, signed tree heads, consistency checked in the browser, export."""

from __future__ import annotations

from aiohttp import web

from console.upstream import ApiFailure
from console.web import PREFIX, public_key, render, session_of, upstream

EXPORT_ENTRIES_MAX = 100_000  # one download; the API's own route pages further


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(f"{PREFIX}/audit", audit)
    router.add_get(f"{PREFIX}/consistency.json", consistency)
    router.add_get(f"{PREFIX}/audit/journal.ndjson", export)


async def _latest_signed(request: web.Request) -> dict | None:
    try:
        return await upstream(request).get("/v1/journal/checkpoints/latest", session_of(request).token)
    except ApiFailure as failure:
        if failure.status != 404:
            raise
        return None


def _size(text: str, default: int, largest: int) -> int:
    """A tree size from the query, kept within 1..largest."""
    return min(max(int(text), 1), largest) if text.isdigit() else default


async def audit(request: web.Request) -> web.Response:
    head = await upstream(request).get("/v1/journal/head", session_of(request).token)
    signed = await _latest_signed(request)
    largest = signed["tree_size"] if signed else 1
    second = _size(request.query.get("second", ""), largest, largest)
    first = _size(request.query.get("first", ""), max(1, second // 2), second)
    return render(request, "audit.html", head=head, signed=signed, public_key=public_key(request), first=first,
                  second=second, export_max=EXPORT_ENTRIES_MAX)


async def consistency(request: web.Request) -> web.Response:
    """Two tree heads and the RFC 9162 proof between them. `second` is the latest signed tree head
    itself when it names that head's size (so its signature can be checked), else the API's tree head."""
    token, signed = session_of(request).token, await _latest_signed(request)
    first, second = request.query.get("first", ""), request.query.get("second", "")
    if not (first.isdigit() and second.isdigit() and 1 <= int(first) <= int(second)):
        return web.json_response({"error": "Give two tree sizes, the first no larger than the second."}, status=400)
    trees = [await upstream(request).get("/v1/journal/tree", token, tree_size=size) for size in (first, second)]
    if signed is not None and signed["tree_size"] == int(second):
        trees[1] = signed
    proof = await upstream(request).get("/v1/journal/proofs/consistency", token, from_size=first, to_size=second)
    return web.json_response({"first": trees[0], "second": trees[1], "proof": proof})


async def export(request: web.Request) -> web.StreamResponse:
    """The API's NDJSON export, passed through in chunks under the session's token (which a link
    could not carry): the download never holds the journal in memory."""
    http = upstream(request)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Content-Disposition": 'attachment; filename="journal.ndjson"'})
    async with http.stream("/v1/journal", session_of(request).token, limit=EXPORT_ENTRIES_MAX) as chunks:
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response
