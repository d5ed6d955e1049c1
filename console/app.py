"""The console's aiohttp routes under `/console/`: sign-in, sessions, CSRF, security headers, pages.

`mount` adds them to an application (the composition root, `cli`, mounts them onto the API's). A
request to a page needs a live session (else: the sign-in page); a POST also needs the session's
CSRF token in its form and, when the browser says where it comes from, this origin. A page that
meets the API's 401 ends its session: a revoked token is signed out on its next page load.
"""

from __future__ import annotations

import logging

import jinja2
from aiohttp import web

from console import admin, auditor, search, vendor, wallet
from console.sessions import SessionStore
from console.upstream import ApiFailure, Upstream, words
from console.web import CONFIG, HERE, PREFIX, SESSION, STORE, TEMPLATES, UPSTREAM, form, redirect, refusal, render
from console.web import session_of
from ledger.config import Settings

log = logging.getLogger("ledger.console")

COOKIE = "ledger_console"
# No inline script or style anywhere: the pages load /console/static/* and talk to this origin only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_OPEN_PATHS = (f"{PREFIX}/sign-in", f"{PREFIX}/static/")


def mount(app: web.Application, settings: Settings, *, public_key: str = "") -> None:
    """Serve the console from `app` under /console/, calling the API at the configured URL. A sub-
    application: its middleware runs on its own pages only, never on the API's requests."""
    console = web.Application(middlewares=[console_middleware])
    console[STORE] = SessionStore()
    console[UPSTREAM] = Upstream(settings.console.api_url or f"http://127.0.0.1:{settings.http.port}")
    console[TEMPLATES] = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                            undefined=jinja2.StrictUndefined)
    console[CONFIG] = {"public_key": public_key, "secure_cookie": settings.console.secure_cookie}
    console.on_cleanup.append(_close_upstream)
    console.router.add_get("/", home)
    console.router.add_get("/sign-in", sign_in_page)
    console.router.add_post("/sign-in", sign_in)
    console.router.add_post("/sign-out", sign_out)
    console.router.add_static("/static/", HERE / "static", append_version=False)
    for module in (vendor, wallet, auditor, admin, search):
        module.add_routes(console.router)
    app.add_subapp(PREFIX, console)


async def _close_upstream(app: web.Application) -> None:
    await app[UPSTREAM].close()


# ---- the middleware: headers, session, CSRF, the API's failures -------------------------------


@web.middleware
async def console_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as answer:  # aiohttp's own: an unknown page, a wrong method, a large form
        response = web.Response(status=answer.status, text=answer.text, headers=answer.headers)
    except ConnectionResetError:  # a download cut after its answer began: no page can follow it
        raise
    except Exception:
        log.exception("console page %s failed", request.path)
        response = refusal(request, 500, "Something went wrong on this page; the error is in the service's log.")
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _guarded(request: web.Request, handler) -> web.StreamResponse:
    if request.path == PREFIX:  # the sub-application's own root, which no route of it can name
        return redirect(f"{PREFIX}/")
    if request.method == "POST" and not _same_origin(request):
        return refusal(request, 403, "This form came from another site.")
    if request.path.startswith(_OPEN_PATHS):
        return await handler(request)
    session = request.app[STORE].get(request.cookies.get(COOKIE))
    if session is None:
        return _to_sign_in()
    request[SESSION] = session
    if request.method == "POST" and not session.csrf_matches((await form(request)).get("csrf")):
        return refusal(request, 403, "This form has expired or did not come from this console; open it again.")
    try:
        return await handler(request)
    except ApiFailure as failure:
        if failure.status == 401:  # the token was revoked (or the principal is gone): sign out now
            request.app[STORE].end(session.id)
            return _to_sign_in()
        return refusal(request, failure.status if failure.status < 500 else 502, words(failure))


def _same_origin(request: web.Request) -> bool:
    """A browser says where a POST comes from; one from another site is refused, the sign-in form
    included (so no other site can sign a browser in under its own token). `Sec-Fetch-Site` first:
    under `Referrer-Policy: no-referrer` a browser sends `Origin: null` even for this origin's forms."""
    fetched_from = request.headers.get("Sec-Fetch-Site")
    if fetched_from is not None:
        return fetched_from in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin in (None, "null") or origin == f"{request.scheme}://{request.host}"


def _to_sign_in() -> web.Response:
    response = redirect(f"{PREFIX}/sign-in")
    response.del_cookie(COOKIE, path=PREFIX)
    return response


# ---- sign-in, sign-out, home --------------------------------------------------------------------


async def sign_in_page(request: web.Request) -> web.Response:
    return render(request, "sign_in.html", error="")


async def sign_in(request: web.Request) -> web.Response:
    """Checks the pasted token against the API (`GET /v1/me`), then keeps it in a new session."""
    token = (await form(request)).get("token", "").strip()
    try:
        me = await request.app[UPSTREAM].get("/v1/me", token) if token else None
    except ApiFailure as failure:
        return render(request, "sign_in.html", status=failure.status if failure.status < 500 else 502,
                      error=words(failure))
    if me is None:
        return render(request, "sign_in.html", status=400, error="Paste an API token to sign in.")
    request.app[STORE].end(request.cookies.get(COOKIE, ""))  # a new sign-in never keeps an older session
    session = request.app[STORE].create(token=token, principal_id=me["id"], role=me["role"], name=me["name"])
    response = redirect(f"{PREFIX}/")
    response.set_cookie(COOKIE, session.id, path=PREFIX, httponly=True, samesite="Strict",
                        secure=request.secure or request.app[CONFIG]["secure_cookie"])
    log.info("console sign-in: principal %s (%s)", me["id"], me["role"])
    return response


async def sign_out(request: web.Request) -> web.Response:
    request.app[STORE].end(session_of(request).id)
    return _to_sign_in()


HOMES = {"vendor": "/vendor", "client": "/wallets", "auditor": "/audit", "admin": "/admin"}


async def home(request: web.Request) -> web.Response:
    return redirect(PREFIX + HOMES[session_of(request).role])
