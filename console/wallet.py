"""The client's pages: wallets with balance and held, statements, paying a vendor, holds."""

from __future__ import annotations

import uuid

from aiohttp import web

from console import search
from console.web import PREFIX, form, redirect, render, session_of, upstream, uuid_or_404

STATEMENT_ROWS = 50  # entries on a statement page


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/wallets", wallets)
    router.add_get("/wallets/{account}/statement", statement)
    router.add_post("/pay", pay)
    router.add_post("/holds", place_hold)
    router.add_get("/holds", find_hold)
    router.add_get("/holds/{hold_id}", hold)
    router.add_post("/holds/{hold_id}/capture", capture)
    router.add_post("/holds/{hold_id}/void", void)



def _whole(text: str | None) -> int | str | None:
    """A whole number as int, empty as None; other text goes to the API as is, to be refused in words."""
    if not text or not text.strip():
        return None
    return int(text) if text.strip().isdigit() else text


async def wallets(request: web.Request) -> web.Response:
    """Each render carries fresh idempotency keys: the same form sent twice pays once."""
    page = await upstream(request).get("/v1/accounts", session_of(request).token, limit=100)
    mine = [account for account in page["items"] if account["kind"] == "wallet"]
    return render(request, "wallets.html", wallets=mine, pay_key=str(uuid.uuid4()), hold_key=str(uuid.uuid4()))


async def statement(request: web.Request) -> web.Response:
    account_id, token = uuid_or_404(request.match_info["account"]), session_of(request).token
    fields = search.asked(request.query)
    account = await upstream(request).get(f"/v1/accounts/{account_id}", token)
    page = await upstream(request).get(f"/v1/accounts/{account_id}/entries", token, limit=STATEMENT_ROWS,
                                       after=request.query.get("after", ""), **search.api_filters(fields))
    return render(request, "statement.html", account=account, entries=page["items"], next=page["next"],
                  fields=fields, more=search.query_string(fields))


def _payment_body(posted: dict[str, str], currency: str) -> dict:
    """The form as the API's body; an order id, if given, goes into metadata, where search finds it."""
    body = {"from_account_id": posted.get("from_account_id", ""), "to_account_id": posted.get("to_account_id", "").strip(),
            "amount": _whole(posted.get("amount")), "currency": currency, "reference": posted.get("reference", "")}
    if posted.get("order_id", "").strip():
        body["metadata"] = {search.ORDER_ID_KEY: posted["order_id"].strip()}
    return body


async def _currency_of(request: web.Request, account_id: str) -> str:
    return (await upstream(request).get(f"/v1/accounts/{uuid_or_404(account_id)}", session_of(request).token))["currency"]


async def pay(request: web.Request) -> web.Response:
    posted = await form(request)
    body = _payment_body(posted, await _currency_of(request, posted.get("from_account_id", "")))
    answer = await upstream(request).call("POST", "/v1/transfers", session_of(request).token, body=body,
                                          idempotency_key=posted.get("idempotency_key") or str(uuid.uuid4()))
    return render(request, "paid.html", status=201, transfer=answer.body, replayed=answer.replayed)


async def place_hold(request: web.Request) -> web.Response:
    posted = await form(request)
    body = _payment_body(posted, await _currency_of(request, posted.get("from_account_id", "")))
    body["expires_in_s"] = _whole(posted.get("expires_in_s"))
    answer = await upstream(request).call("POST", "/v1/holds", session_of(request).token, body=body,
                                          idempotency_key=posted.get("idempotency_key") or str(uuid.uuid4()))
    return redirect(f"{PREFIX}/holds/{answer.body['id']}")


async def find_hold(request: web.Request) -> web.Response:
    return redirect(f"{PREFIX}/holds/{uuid_or_404(request.query.get('id', ''))}")


async def hold(request: web.Request) -> web.Response:
    found = await upstream(request).get(f"/v1/holds/{uuid_or_404(request.match_info['hold_id'])}", session_of(request).token)
    return render(request, "hold.html", hold=found, capture_key=str(uuid.uuid4()), void_key=str(uuid.uuid4()))


async def capture(request: web.Request) -> web.Response:
    hold_id, posted = uuid_or_404(request.match_info["hold_id"]), await form(request)
    amount = _whole(posted.get("amount"))
    await upstream(request).call("POST", f"/v1/holds/{hold_id}/capture", session_of(request).token,
                                 body={} if amount is None else {"amount": amount},
                                 idempotency_key=posted.get("idempotency_key") or str(uuid.uuid4()))
    return redirect(f"{PREFIX}/holds/{hold_id}")


async def void(request: web.Request) -> web.Response:
    hold_id, posted = uuid_or_404(request.match_info["hold_id"]), await form(request)
    await upstream(request).call("POST", f"/v1/holds/{hold_id}/void", session_of(request).token,
                                 idempotency_key=posted.get("idempotency_key") or str(uuid.uuid4()))
    return redirect(f"{PREFIX}/holds/{hold_id}")
