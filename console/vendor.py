"""The vendor's pages: payments received (live), a payment with its proof, refunds, webhook endpoints."""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web
from markupsafe import Markup

from console import search
from console.upstream import ApiFailure
from console.web import PREFIX, form, public_key, redirect, render, session_of, upstream, uuid_or_404

PAGE_ROWS = 25  # payments on a page; the live list refreshes the newest page only
DELIVERIES_SCANNED_MAX = 100  # per endpoint, the newest page scanned for a payment's deliveries
REFUND_SEEN_WAIT_MS = 2_000  # after a refund, how long the payment page waits for the projection
EVENT_TYPES = ("transfer.received", "refund.created", "hold.created", "hold.captured", "hold.voided", "hold.expired")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/vendor", payments)
    router.add_get("/vendor/{account}/payments.fragment", payments_fragment)
    router.add_get("/payments/{transfer_id}", payment)
    router.add_get("/payments/{transfer_id}/proof.json", proof)
    router.add_post("/payments/{transfer_id}/refunds", refund)
    router.add_get("/vendor/webhooks", webhooks)
    router.add_post("/vendor/webhooks", add_webhook)
    router.add_post("/vendor/webhooks/{webhook_id}/delete", delete_webhook)
    router.add_get("/vendor/webhooks/{webhook_id}", deliveries)


def _id(request: web.Request, name: str) -> str:
    """A path or form id as a UUID's text; anything else is a 404 before the API is asked."""
    return uuid_or_404(request.match_info.get(name) or request.query.get(name, ""))


async def _vendor_accounts(request: web.Request) -> list[dict]:
    page = await upstream(request).get("/v1/accounts", session_of(request).token, limit=100)
    return [account for account in page["items"] if account["kind"] == "vendor"]


def _chosen(accounts: list[dict], wanted: str) -> str:
    ids = [account["id"] for account in accounts]
    return wanted if wanted in ids else (ids[0] if ids else "")


async def _newest(request: web.Request, account: str, after: str = "", filters: dict | None = None) -> dict:
    return await upstream(request).get(f"/v1/vendors/{account}/transfers", session_of(request).token,
                                       order="desc", limit=PAGE_ROWS, after=after, **(filters or {}))


async def payments(request: web.Request) -> web.Response:
    """The newest payments, live; or, with the search form filled in, the matching ones (not live:
    the live refresh would put the unfiltered newest rows back)."""
    accounts = await _vendor_accounts(request)
    account = _chosen(accounts, request.query.get("account", ""))
    after, fields = request.query.get("after", ""), search.asked(request.query)
    page = {"items": [], "next": None}
    if account:
        page = await _newest(request, account, after, search.api_filters(fields))
    shown = next((a for a in accounts if a["id"] == account), None)
    return render(request, "vendor.html", accounts=accounts, account=account, shown=shown, payments=page["items"],
                  next=page["next"], live=not after and not fields, fields=fields, more=search.query_string(fields))


async def payments_fragment(request: web.Request) -> web.Response:
    """The newest page's rows, which the page's script swaps in every second (static/live.js)."""
    page = await _newest(request, _id(request, "account"))
    return render(request, "_payment_rows.html", payments=page["items"])


async def payment(request: web.Request) -> web.Response:
    transfer_id, token = _id(request, "transfer_id"), session_of(request).token
    answer = await upstream(request).call("GET", f"/v1/transfers/{transfer_id}", token)
    entry = answer.body
    mine = await _receiving_vendor(request, entry)
    verification, note = await _verification(request, entry, request.query.get("seen", ""))
    return render(request, "payment.html", entry=entry, entry_json=_script_json(answer.raw),
                  public_key=public_key(request), verification=verification, verification_note=note,
                  can_refund=mine and entry.get("kind", "transfer") != "refund",
                  idempotency_key=str(uuid.uuid4()),
                  deliveries=await _deliveries_of(request, entry) if mine else None)


async def _receiving_vendor(request: web.Request, entry: dict) -> bool:
    """Whether the signed-in vendor received this payment (so it may refund it and see its webhook
    deliveries). An admin or auditor lists every account, which says nothing about that."""
    if session_of(request).role != "vendor":
        return False
    return entry["to_account_id"] in {a["id"] for a in await _vendor_accounts(request)}


def _script_json(raw: bytes) -> Markup:
    """The API's JSON inside <script type="application/json">: `<`, `>` and `&` occur only inside
    its strings, where their \\u escapes decode to the same value, so nothing can close the element."""
    text = raw.decode().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


async def _verification(request: web.Request, entry: dict, seen: str) -> tuple[dict | None, str]:
    params = {"min_position": seen, "wait_ms": REFUND_SEEN_WAIT_MS} if seen.isdigit() else {}
    path = f"/v1/vendors/{entry['to_account_id']}/transfers/{entry['id']}/verification"
    try:
        return await upstream(request).get(path, session_of(request).token, **params), ""
    except ApiFailure as failure:
        if failure.status == 401:
            raise
        return None, "The vendor projection has no verification of this entry (yet, or it is not a payment to you)."


async def _deliveries_of(request: web.Request, entry: dict) -> list[dict]:
    """The deliveries of this payment's events, from the newest page of each of the vendor's endpoints."""
    account, token = entry["to_account_id"], session_of(request).token
    hooks = (await upstream(request).get(f"/v1/vendors/{account}/webhooks", token, limit=100))["items"]
    pages = await asyncio.gather(*(upstream(request).get(f"/v1/vendors/{account}/webhooks/{hook['id']}/deliveries",
                                                         token, limit=DELIVERIES_SCANNED_MAX) for hook in hooks))
    return [{**delivery, "url": hook["url"]} for hook, page in zip(hooks, pages)
            for delivery in page["items"] if delivery["position"] == entry["position"]]


async def proof(request: web.Request) -> web.Response:
    """The latest signed tree head, then the entry's inclusion proof at that head's size."""
    transfer_id, token = _id(request, "transfer_id"), session_of(request).token
    entry = await upstream(request).get(f"/v1/transfers/{transfer_id}", token)
    try:
        head = await upstream(request).get("/v1/journal/checkpoints/latest", token)
    except ApiFailure as failure:
        if failure.status != 404:
            raise
        return web.json_response({"detail": "No tree head has been signed yet; try again shortly."}, status=409)
    if head["tree_size"] < entry["position"]:
        return web.json_response({"detail": "The latest signed tree head is older than this payment; try again"
                                           " in a few seconds."}, status=409)
    inclusion = await upstream(request).get("/v1/journal/proofs/inclusion", token, position=entry["position"],
                                            tree_size=head["tree_size"])
    return web.json_response({"inclusion": inclusion, "head": head})


async def refund(request: web.Request) -> web.Response:
    transfer_id, posted = _id(request, "transfer_id"), await form(request)
    body = {"amount": _whole(posted.get("amount", "")), "reference": posted.get("reference", "")}
    answer = await upstream(request).call("POST", f"/v1/transfers/{transfer_id}/refunds", session_of(request).token,
                                          body=body, idempotency_key=posted.get("idempotency_key") or None)
    return redirect(f"{PREFIX}/payments/{transfer_id}?seen={answer.body['position']}")


def _whole(text: str) -> int | str:
    """A whole number as int; anything else is passed on as text, for the API to refuse in words."""
    return int(text) if text.strip().isdigit() else text


async def webhooks(request: web.Request, created: dict | None = None) -> web.Response:
    accounts = await _vendor_accounts(request)
    account = _chosen(accounts, request.query.get("account", "") or (created or {}).get("account", ""))
    listed = []
    if account:
        listed = (await upstream(request).get(f"/v1/vendors/{account}/webhooks", session_of(request).token,
                                              limit=100))["items"]
    return render(request, "webhooks.html", account=account, webhooks=listed, created=created,
                  event_types=EVENT_TYPES)


async def add_webhook(request: web.Request) -> web.Response:
    """Answers with the list and the new secret, shown this once (never kept by the console)."""
    posted = await form(request)
    account = str(uuid.UUID(posted.get("account", ""))) if _is_uuid(posted.get("account", "")) else ""
    body: dict = {"url": posted.get("url", "")}
    chosen = [kind for kind in EVENT_TYPES if posted.get(f"event_{kind}")]
    if chosen:
        body["event_types"] = chosen
    answer = await upstream(request).call("POST", f"/v1/vendors/{account}/webhooks", session_of(request).token,
                                          body=body)
    return await webhooks(request, created={**answer.body, "account": account})


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


async def delete_webhook(request: web.Request) -> web.Response:
    webhook_id, account = _id(request, "webhook_id"), (await form(request)).get("account", "")
    if not _is_uuid(account):
        raise web.HTTPNotFound()
    await upstream(request).call("DELETE", f"/v1/vendors/{account}/webhooks/{webhook_id}", session_of(request).token)
    return redirect(f"{PREFIX}/vendor/webhooks?account={account}")


async def deliveries(request: web.Request) -> web.Response:
    webhook_id, account = _id(request, "webhook_id"), _id(request, "account")
    page = await upstream(request).get(f"/v1/vendors/{account}/webhooks/{webhook_id}/deliveries",
                                       session_of(request).token, limit=100, after=request.query.get("after", ""))
    return render(request, "deliveries.html", webhook_id=webhook_id, account=account, deliveries=page["items"],
                  next=page["next"])
