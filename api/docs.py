"""`GET /docs`: the API reference, rendered in the browser from `/openapi.json`.

The renderer is Redoc's standalone bundle (npm `redoc` 2.5.4, `bundles/redoc.standalone.js`, MIT,
licenses beside it in `api/static/`), shipped inside the package and read with
importlib.resources, so the page works offline and behind an egress firewall. The page has no
inline script, and its Content-Security-Policy keeps the browser from fetching anything from
another origin (Redoc's footer logo from its CDN simply does not show).
"""

from __future__ import annotations

import functools
import importlib.resources

from aiohttp import web

from api.problems import ApiError

STATIC_PREFIX = "/static"
RENDERER = "redoc.standalone.js"
# Only these files are served; anything else under /static is a 404.
ASSETS: dict[str, str] = {
    RENDERER: "text/javascript",
    "redoc.standalone.js.LICENSE.txt": "text/plain",
    "redoc.LICENSE": "text/plain",
}
ASSET_MAX_AGE_S = 3600

# Redoc compiles schema validators at run time ('unsafe-eval'), styles itself with injected
# <style> tags ('unsafe-inline') and runs its search index in a blob: worker.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:"
)

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Wallet ledger API</title>
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="{STATIC_PREFIX}/{RENDERER}"></script>
</body>
</html>
"""


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(
        text=PAGE, content_type="text/html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY}
    )


async def static_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise ApiError("not_found", f"no asset {name}")
    return web.Response(
        body=_asset_bytes(name),
        content_type=ASSETS[name],
        headers={"Cache-Control": f"public, max-age={ASSET_MAX_AGE_S}"},
    )


@functools.cache
def _asset_bytes(name: str) -> bytes:
    return importlib.resources.files("api").joinpath("static", name).read_bytes()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/docs", docs_page)
    app.router.add_get(STATIC_PREFIX + "/{name}", static_asset)
