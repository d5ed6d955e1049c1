"""What every console page uses: its keys on the application, the form, rendering, redirects."""

from __future__ import annotations

import uuid
from pathlib import Path

import jinja2
from aiohttp import web

from console.sessions import Session, SessionStore
from console.upstream import Upstream

PREFIX = "/console"
FORM_BYTES_MAX = 16 * 1024  # a console form is a few short fields
HERE = Path(__file__).parent

STORE = web.AppKey("console_sessions", SessionStore)
UPSTREAM = web.AppKey("console_upstream", Upstream)
TEMPLATES = web.AppKey("console_templates", jinja2.Environment)
CONFIG = web.AppKey("console_config", dict)
SESSION = web.RequestKey("console_session", Session)
FORM = web.RequestKey("console_form", dict)


def redirect(location: str) -> web.Response:
    """303: the browser GETs `location` (after a POST too)."""
    return web.Response(status=303, headers={"Location": location})


async def form(request: web.Request) -> dict[str, str]:
    """The POSTed form (read once, kept on the request), its values as text."""
    if FORM not in request:
        if request.content_length is not None and request.content_length > FORM_BYTES_MAX:
            raise web.HTTPRequestEntityTooLarge(max_size=FORM_BYTES_MAX, actual_size=request.content_length)
        posted = await request.post()
        request[FORM] = {key: value for key, value in posted.items() if isinstance(value, str)}
    return request[FORM]


def render(request: web.Request, template: str, status: int = 200, **values) -> web.Response:
    session = request.get(SESSION)
    page = request.app[TEMPLATES].get_template(template).render(
        session=session, csrf=session.csrf if session else "", prefix=PREFIX, **values)
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def refusal(request: web.Request, status: int, message: str) -> web.Response:
    """A page that says in words why the request was refused."""
    return render(request, "refused.html", status=status, message=message)


def session_of(request: web.Request) -> Session:
    return request[SESSION]


def upstream(request: web.Request) -> Upstream:
    return request.app[UPSTREAM]


def public_key(request: web.Request) -> str:
    return request.app[CONFIG]["public_key"]


def uuid_or_404(text: str) -> str:
    """An id from a URL as a UUID's text; anything else is a 404 before the API is asked."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise web.HTTPNotFound() from None
