"""The admin's pages: principals and their tokens (created, listed, revoked), accounts."""

from __future__ import annotations

import uuid

from aiohttp import web

from console.web import PREFIX, form, redirect, render, session_of, upstream

ROLES = ("client", "vendor", "auditor", "admin")
KINDS = ("wallet", "vendor", "system")
ACCOUNT_ROWS = 50


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin", admin)
    router.add_post("/admin/principals", create_principal)
    router.add_post("/admin/accounts", create_account)
    router.add_get("/admin/principal", find_principal)
    router.add_get("/admin/principals/{principal_id}", principal)
    router.add_post("/admin/principals/{principal_id}/tokens", issue_token)
    router.add_post("/admin/principals/{principal_id}/tokens/{token_id}/revoke", revoke_token)


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise web.HTTPNotFound() from None


async def admin(request: web.Request, **created) -> web.Response:
    page = await upstream(request).get("/v1/accounts", session_of(request).token, limit=ACCOUNT_ROWS,
                                       after=request.query.get("after", ""))
    return render(request, "admin.html", roles=ROLES, kinds=KINDS, accounts=page["items"], next=page["next"],
                  created_principal=created.get("principal"), created_account=created.get("account"))


async def create_principal(request: web.Request) -> web.Response:
    """The answer shows the new token this once; the console keeps no copy."""
    posted = await form(request)
    answer = await upstream(request).call("POST", "/v1/principals", session_of(request).token,
                                          body={"role": posted.get("role", ""), "name": posted.get("name", "")})
    return await admin(request, principal=answer.body)


async def create_account(request: web.Request) -> web.Response:
    posted = await form(request)
    body = {"kind": posted.get("kind", ""), "currency": posted.get("currency", "").strip(), "id": str(uuid.uuid4()),
            "name": posted.get("name", "")}
    if posted.get("owner_id", "").strip():
        body["owner_id"] = posted["owner_id"].strip()
    answer = await upstream(request).call("POST", "/v1/accounts", session_of(request).token, body=body)
    return await admin(request, account=answer.body)


async def find_principal(request: web.Request) -> web.Response:
    return redirect(f"{PREFIX}/admin/principals/{_uuid(request.query.get('id', ''))}")


async def principal(request: web.Request, issued: dict | None = None) -> web.Response:
    principal_id = _uuid(request.match_info["principal_id"])
    listed = await upstream(request).get(f"/v1/principals/{principal_id}/tokens", session_of(request).token)
    return render(request, "principal.html", principal_id=principal_id, tokens=listed["items"], issued=issued)


async def issue_token(request: web.Request) -> web.Response:
    principal_id = _uuid(request.match_info["principal_id"])
    answer = await upstream(request).call("POST", f"/v1/principals/{principal_id}/tokens", session_of(request).token)
    return await principal(request, issued=answer.body)


async def revoke_token(request: web.Request) -> web.Response:
    principal_id, token_id = _uuid(request.match_info["principal_id"]), _uuid(request.match_info["token_id"])
    await upstream(request).call("DELETE", f"/v1/principals/{principal_id}/tokens/{token_id}",
                                 session_of(request).token)
    return redirect(f"{PREFIX}/admin/principals/{principal_id}")
