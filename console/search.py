"""Searching payments: the search form's fields as the API's filters; the admin and auditor page.

The vendor's payments, the client's statement and this page share one form (`search_form` in
`_macros.html`): an order id (`metadata.order_id`), any one metadata key and value, and a date
range. They become the API's own parameters (CONTRACT v3, "Searching entries by metadata"); the API checks them and a
refusal is shown in words like any other.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

from aiohttp import web

from console.web import render, session_of, upstream

ORDER_ID_KEY = "order_id"  # the metadata key the console's pay form writes and its search reads
SEARCH_FIELDS = ("order_id", "key", "value", "from", "to")
SEARCH_ROWS = 50
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# A date from the form's date inputs covers the whole day (UTC); a full RFC 3339 time goes as typed.
_DAY_STARTS, _DAY_ENDS = "T00:00:00Z", "T23:59:59.999999Z"


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/search", search)


def asked(query: Mapping[str, str]) -> dict[str, str]:
    """The search form's fields that were filled in, trimmed."""
    return {name: query[name].strip() for name in SEARCH_FIELDS if query.get(name, "").strip()}


def api_filters(fields: dict[str, str]) -> dict[str, str]:
    """The form's fields as the API's query parameters."""
    params: dict[str, str] = {}
    if "order_id" in fields:
        params[f"metadata.{ORDER_ID_KEY}"] = fields["order_id"]
    if "key" in fields:
        params[f"metadata.{fields['key']}"] = fields.get("value", "")
    for name, day_time in (("from", _DAY_STARTS), ("to", _DAY_ENDS)):
        if name in fields:
            params[name] = fields[name] + day_time if _DATE.match(fields[name]) else fields[name]
    return params


def query_string(fields: dict[str, str]) -> str:
    """The fields again, for a link to the next page of the same search (starts with `&`, or empty)."""
    return "&" + urllib.parse.urlencode(fields) if fields else ""


async def search(request: web.Request) -> web.Response:
    """Admin and auditor: entries of the whole journal (or of one account) by metadata and date,
    through `GET /v1/transfers`; the API refuses other roles, in words."""
    fields = asked(request.query)
    account_id = request.query.get("account_id", "").strip()
    page = {"items": [], "next": None}
    if fields or account_id:
        page = await upstream(request).get("/v1/transfers", session_of(request).token, limit=SEARCH_ROWS,
                                           after=request.query.get("after", ""), account_id=account_id,
                                           **api_filters(fields))
    more = query_string({**fields, **({"account_id": account_id} if account_id else {})})
    return render(request, "search.html", fields=fields, account_id=account_id, searched=bool(fields or account_id),
                  entries=page["items"], next=page["next"], more=more)
