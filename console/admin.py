"""The admin's pages: principals and their tokens (created, listed, revoked), accounts, their controls."""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from console.web import PREFIX, form, redirect, render, session_of, upstream, uuid_or_404

ROLES = ("client", "vendor", "auditor", "admin")
KINDS = ("wallet", "vendor", "system")
STATUSES = ("active", "frozen", "closed")
_INTEGER = re.compile(r"^-?[0-9]+$")
ACCOUNT_ROWS = 50


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin", admin)
    router.add_post("/admin/principals", create_principal)
    router.add_post("/admin/accounts", create_account)
    router.add_get("/admin/accounts/{account_id}", account_page)
    router.add_post("/admin/accounts/{account_id}/controls", change_controls)
    router.add_get("/admin/principal", find_principal)
    router.add_get("/admin/principals/{principal_id}", principal)
    router.add_post("/admin/principals/{principal_id}/tokens", issue_token)
    router.add_post("/admin/principals/{principal_id}/tokens/{token_id}/revoke", revoke_token)



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
    for field in ("credit_line", "cap"):  # left empty: the kind's default
        if posted.get(field, "").strip():
            body.update(_limit(body["kind"], field, posted[field]))
    answer = await upstream(request).call("POST", "/v1/accounts", session_of(request).token, body=body)
    return await admin(request, account=answer.body)


def _limit(kind: str, field: str, text: str) -> dict:
    """A limit field of a form as the API's control. The form speaks of a credit line (how far below
    zero the balance may go) and a cap; the API of `min_balance` <= 0 and `max_balance`. Empty
    clears it: no credit line (for a system account, unbounded below, its default) and no cap. Other
    text, or a negative credit line, goes to the API as it comes out, to be refused in words."""
    text = text.strip()
    amount: int | str | None = int(text) if _INTEGER.match(text) else (text or None)
    if field == "cap":
        return {"max_balance": amount}
    if amount is None:
        return {"min_balance": None if kind == "system" else 0}
    return {"min_balance": -amount if isinstance(amount, int) else amount}


async def account_page(request: web.Request) -> web.Response:
    account_id = uuid_or_404(request.match_info["account_id"])
    account = await upstream(request).get(f"/v1/accounts/{account_id}", session_of(request).token)
    return render(request, "account.html", account=account, statuses=STATUSES)


async def change_controls(request: web.Request) -> web.Response:
    """PATCH only what the form changes: an unchanged control is no journal entry. A refusal (closing
    an account that still holds money, say) is the API's 422, shown in words."""
    account_id, posted, token = uuid_or_404(request.match_info["account_id"]), await form(request), session_of(request).token
    account = await upstream(request).get(f"/v1/accounts/{account_id}", token)
    wanted = {"status": posted.get("status", account["status"]),
              **_limit(account["kind"], "credit_line", posted.get("credit_line", "")),
              **_limit(account["kind"], "cap", posted.get("cap", ""))}
    change = {name: value for name, value in wanted.items() if value != account[name]}
    if change:
        await upstream(request).call("PATCH", f"/v1/accounts/{account_id}", token, body=change)
    return redirect(f"{PREFIX}/admin/accounts/{account_id}")


async def find_principal(request: web.Request) -> web.Response:
    return redirect(f"{PREFIX}/admin/principals/{uuid_or_404(request.query.get('id', ''))}")


async def principal(request: web.Request, issued: dict | None = None) -> web.Response:
    principal_id = uuid_or_404(request.match_info["principal_id"])
    listed = await upstream(request).get(f"/v1/principals/{principal_id}/tokens", session_of(request).token)
    return render(request, "principal.html", principal_id=principal_id, tokens=listed["items"], issued=issued)


async def issue_token(request: web.Request) -> web.Response:
    principal_id = uuid_or_404(request.match_info["principal_id"])
    answer = await upstream(request).call("POST", f"/v1/principals/{principal_id}/tokens", session_of(request).token)
    return await principal(request, issued=answer.body)


async def revoke_token(request: web.Request) -> web.Response:
    principal_id, token_id = uuid_or_404(request.match_info["principal_id"]), uuid_or_404(request.match_info["token_id"])
    await upstream(request).call("DELETE", f"/v1/principals/{principal_id}/tokens/{token_id}",
                                 session_of(request).token)
    return redirect(f"{PREFIX}/admin/principals/{principal_id}")
