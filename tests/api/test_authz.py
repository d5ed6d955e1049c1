"""The authorization matrix: every kind of caller against every route, including resources that
belong to someone else and resources that do not exist.

The expectations are generated from the contract's role table, written out below as data (not
imported from `api.auth`), so this checks the implementation against CONTRACT.md:
- no token, an unknown token or a malformed header: 401 `unauthenticated` (public routes: 200);
- a role the route's row does not name: 403 `forbidden`;
- a role that may act only on what it owns, on something it does not own (or that does not
  exist): 403 `forbidden`;
- otherwise the route's own answer for that resource: 2xx, or 404/422 when it does not exist.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Callable

import pytest
import pytest_asyncio

EVERYTHING = "everything"  # the role reaches every resource of the route
OWN = "own"  # the role reaches only resources its principal owns

# CONTRACT.md, "Auth" and "Routes": who may call each route, and on what.
CONTRACT_ROLES: dict[str, dict[str, str]] = {
    "create_principal": {"admin": EVERYTHING},
    "create_account": {"admin": EVERYTHING},
    "get_account": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": OWN, "vendor": OWN},
    "create_transfer": {"admin": EVERYTHING, "client": OWN},
    "get_transfer": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": OWN, "vendor": OWN},
    "get_verification": {"admin": EVERYTHING, "auditor": EVERYTHING, "vendor": OWN},
    "list_verifications": {"admin": EVERYTHING, "auditor": EVERYTHING, "vendor": OWN},
    "get_journal": {"admin": EVERYTHING, "auditor": EVERYTHING},
    "get_journal_head": {"admin": EVERYTHING, "auditor": EVERYTHING},
    # v2 "Principals and tokens"
    "create_token": {"admin": EVERYTHING},
    "list_tokens": {"admin": EVERYTHING},
    "revoke_token": {"admin": EVERYTHING},
    # v2 "Proofs"
    "get_tree": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": EVERYTHING, "vendor": EVERYTHING},
    "get_inclusion_proof": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": OWN, "vendor": OWN},
    "get_consistency_proof": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": EVERYTHING, "vendor": EVERYTHING},
    "get_latest_checkpoint": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": EVERYTHING, "vendor": EVERYTHING},
    # v2
    "list_accounts": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": EVERYTHING, "vendor": EVERYTHING},
    "get_statement": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": OWN, "vendor": OWN},
    "create_refund": {"admin": EVERYTHING, "vendor": OWN},
    # v2 "Vendor webhooks": the vendor's owner and admin only
    "create_webhook": {"admin": EVERYTHING, "vendor": OWN},
    "list_webhooks": {"admin": EVERYTHING, "vendor": OWN},
    "delete_webhook": {"admin": EVERYTHING, "vendor": OWN},
    "list_webhook_deliveries": {"admin": EVERYTHING, "vendor": OWN},
    # v2 "Holds"
    "create_hold": {"admin": EVERYTHING, "client": OWN},
    "capture_hold": {"admin": EVERYTHING, "client": OWN, "vendor": OWN},
    "void_hold": {"admin": EVERYTHING, "client": OWN, "vendor": OWN},
    "get_hold": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": OWN, "vendor": OWN},
    # v3 "Batches": every role that writes; each item is checked as its single route (below)
    "create_batch": {"admin": EVERYTHING, "client": EVERYTHING, "vendor": EVERYTHING},
    # v3 "Searching entries by metadata": the whole journal for admin and auditor only
    "list_transfers": {"admin": EVERYTHING, "auditor": EVERYTHING},
    # v3 "The console": every role learns its own principal
    "get_me": {"admin": EVERYTHING, "auditor": EVERYTHING, "client": EVERYTHING, "vendor": EVERYTHING},
}
PUBLIC_ROUTES = frozenset({"healthz", "readyz", "openapi", "metrics"})

# Callers: a principal of each role, a second client and a second vendor (to own other things),
# and three ways of not being anyone.
ACTORS: dict[str, str | None] = {
    "admin": "admin",
    "auditor": "auditor",
    "client": "client",
    "other_client": "client",
    "vendor": "vendor",
    "other_vendor": "vendor",
    "no_token": None,
    "unknown_token": None,
    "malformed_header": None,
}
WAIT = {"wait_ms": 5000}
FUNDS = 10_000
PAID = 100


@dataclasses.dataclass(frozen=True)
class Probe:
    """One request; `owners` are the actors who own the resource it acts on; `found` is the answer
    when the caller may act on it (a 2xx, or the route's 404/422 for what does not exist)."""

    route: str
    method: str
    path: str
    found: int
    owners: frozenset[str] = frozenset()
    json: Any = None
    params: dict | None = None
    code: str | None = None


@dataclasses.dataclass
class World:
    ids: dict[str, str]  # actor -> principal id
    tokens: dict[str, str]  # actor -> Authorization header value ("" for none)
    client_wallet: str
    other_wallet: str
    vendor_account: str
    other_vendor_account: str
    paid: dict  # a transfer from client_wallet to vendor_account
    webhook: str = str(uuid.UUID(int=1))  # an endpoint of vendor_account (ABSENT until the world is built)
    held: dict = dataclasses.field(default_factory=lambda: {"id": ABSENT})  # a hold of client_wallet for vendor_account


def _transfer(source: str, target: str) -> dict:
    return {"from_account_id": source, "to_account_id": target, "amount": 1, "currency": "USD"}


def _verification(account: str, transfer: str) -> str:
    return f"/v1/vendors/{account}/transfers/{transfer}/verification"


ABSENT = str(uuid.UUID(int=1))

# Every request of the matrix, by name; each acts on the world built below.
PROBES: dict[str, Callable[[World], Probe]] = {
    "create principal": lambda w: Probe("create_principal", "POST", "/v1/principals", 201,
                                        json={"role": "client", "name": "authz"}),
    "create account": lambda w: Probe("create_account", "POST", "/v1/accounts", 201,
                                      json={"kind": "wallet", "currency": "USD", "owner_id": w.ids["client"]}),
    "read client's wallet": lambda w: Probe("get_account", "GET", f"/v1/accounts/{w.client_wallet}", 200,
                                            owners=frozenset({"client"})),
    "read vendor's account": lambda w: Probe("get_account", "GET", f"/v1/accounts/{w.vendor_account}", 200,
                                             owners=frozenset({"vendor"})),
    "read absent account": lambda w: Probe("get_account", "GET", f"/v1/accounts/{ABSENT}", 404, code="not_found"),
    "pay from client's wallet": lambda w: Probe("create_transfer", "POST", "/v1/transfers", 201,
                                                owners=frozenset({"client"}),
                                                json=_transfer(w.client_wallet, w.vendor_account)),
    "pay from other client's wallet": lambda w: Probe("create_transfer", "POST", "/v1/transfers", 201,
                                                      owners=frozenset({"other_client"}),
                                                      json=_transfer(w.other_wallet, w.vendor_account)),
    "pay from vendor's account": lambda w: Probe("create_transfer", "POST", "/v1/transfers", 201,
                                                 owners=frozenset({"vendor"}),
                                                 json=_transfer(w.vendor_account, w.client_wallet)),
    "pay from absent account": lambda w: Probe("create_transfer", "POST", "/v1/transfers", 422,
                                               json=_transfer(ABSENT, w.vendor_account), code="account_not_found"),
    "read transfer": lambda w: Probe("get_transfer", "GET", f"/v1/transfers/{w.paid['id']}", 200,
                                     owners=frozenset({"client", "vendor"})),
    "read absent transfer": lambda w: Probe("get_transfer", "GET", f"/v1/transfers/{ABSENT}", 404, code="not_found"),
    "verify transfer": lambda w: Probe("get_verification", "GET", _verification(w.vendor_account, w.paid["id"]), 200,
                                       owners=frozenset({"vendor"}),
                                       params={"min_position": w.paid["position"], **WAIT}),
    "verify absent transfer": lambda w: Probe("get_verification", "GET", _verification(w.vendor_account, ABSENT),
                                              404, owners=frozenset({"vendor"}),
                                              params={"min_position": w.paid["position"], **WAIT}, code="not_found"),
    "verify at other vendor": lambda w: Probe("get_verification", "GET",
                                              _verification(w.other_vendor_account, w.paid["id"]), 404,
                                              owners=frozenset({"other_vendor"}),
                                              params={"min_position": w.paid["position"], **WAIT}, code="not_found"),
    "verify at a wallet": lambda w: Probe("get_verification", "GET", _verification(w.client_wallet, w.paid["id"]),
                                          404, code="not_found"),
    "verify at absent account": lambda w: Probe("get_verification", "GET", _verification(ABSENT, w.paid["id"]),
                                                404, code="not_found"),
    "list vendor's transfers": lambda w: Probe("list_verifications", "GET",
                                               f"/v1/vendors/{w.vendor_account}/transfers", 200,
                                               owners=frozenset({"vendor"})),
    "list other vendor's transfers": lambda w: Probe("list_verifications", "GET",
                                                     f"/v1/vendors/{w.other_vendor_account}/transfers", 200,
                                                     owners=frozenset({"other_vendor"})),
    "list a wallet's transfers": lambda w: Probe("list_verifications", "GET",
                                                 f"/v1/vendors/{w.client_wallet}/transfers", 404, code="not_found"),
    "list own accounts": lambda w: Probe("list_accounts", "GET", "/v1/accounts", 200, params={"limit": 5}),
    "read client's statement": lambda w: Probe("get_statement", "GET", f"/v1/accounts/{w.client_wallet}/entries", 200,
                                               owners=frozenset({"client"})),
    "read vendor's statement": lambda w: Probe("get_statement", "GET", f"/v1/accounts/{w.vendor_account}/entries",
                                               200, owners=frozenset({"vendor"}), params={"reference": "x"}),
    "read absent statement": lambda w: Probe("get_statement", "GET", f"/v1/accounts/{ABSENT}/entries", 404,
                                             code="not_found"),
    "read client's wallet at position 0": lambda w: Probe("get_account", "GET", f"/v1/accounts/{w.client_wallet}",
                                                          200, owners=frozenset({"client"}),
                                                          params={"at_position": 0}),
    "read client's wallet as of a time": lambda w: Probe("get_account", "GET", f"/v1/accounts/{w.client_wallet}",
                                                         200, owners=frozenset({"client"}),
                                                         params={"as_of": "2026-01-01T00:00:00Z"}),
    "read client's wallet past the head": lambda w: Probe("get_account", "GET", f"/v1/accounts/{w.client_wallet}",
                                                          422, owners=frozenset({"client"}),
                                                          params={"at_position": 2**62},
                                                          code="position_out_of_range"),
    "read absent account at a position": lambda w: Probe("get_account", "GET", f"/v1/accounts/{ABSENT}", 404,
                                                         params={"at_position": 1}, code="not_found"),
    "refund payment": lambda w: Probe("create_refund", "POST", f"/v1/transfers/{w.paid['id']}/refunds", 201,
                                      owners=frozenset({"vendor"}), json={"amount": 1}),
    "refund absent transfer": lambda w: Probe("create_refund", "POST", f"/v1/transfers/{ABSENT}/refunds", 404,
                                              json={"amount": 1}, code="not_found"),
    "read journal": lambda w: Probe("get_journal", "GET", "/v1/journal", 200, params={"limit": 1}),
    "read journal head": lambda w: Probe("get_journal_head", "GET", "/v1/journal/head", 200),
    "issue a token": lambda w: Probe("create_token", "POST", f"/v1/principals/{w.ids['other_client']}/tokens", 201),
    "list tokens": lambda w: Probe("list_tokens", "GET", f"/v1/principals/{w.ids['other_client']}/tokens", 200),
    "revoke an absent token": lambda w: Probe("revoke_token", "DELETE",
                                              f"/v1/principals/{w.ids['other_client']}/tokens/{ABSENT}", 404,
                                              code="not_found"),
    "who am I": lambda w: Probe("get_me", "GET", "/v1/me", 200),
    "liveness": lambda w: Probe("healthz", "GET", "/healthz", 200),
    "readiness": lambda w: Probe("readyz", "GET", "/readyz", 200),
    "openapi document": lambda w: Probe("openapi", "GET", "/openapi.json", 200),
    "metrics": lambda w: Probe("metrics", "GET", "/metrics", 200),
    "read the tree": lambda w: Probe("get_tree", "GET", "/v1/journal/tree", 200),
    "prove inclusion": lambda w: Probe("get_inclusion_proof", "GET", "/v1/journal/proofs/inclusion", 200,
                                       owners=frozenset({"client", "vendor"}), params={"position": w.paid["position"]}),
    "prove inclusion past the head": lambda w: Probe("get_inclusion_proof", "GET", "/v1/journal/proofs/inclusion", 422,
                                                     params={"position": 2**62}, code="position_out_of_range"),
    "prove consistency": lambda w: Probe("get_consistency_proof", "GET", "/v1/journal/proofs/consistency", 200,
                                         params={"from_size": 1}),
    "read the latest tree head": lambda w: Probe("get_latest_checkpoint", "GET", "/v1/journal/checkpoints/latest", 200),
    "register a webhook": lambda w: Probe("create_webhook", "POST", f"/v1/vendors/{w.vendor_account}/webhooks", 201,
                                          owners=frozenset({"vendor"}), json={"url": "https://example.com/hook"}),
    "register a webhook at absent account": lambda w: Probe("create_webhook", "POST", f"/v1/vendors/{ABSENT}/webhooks",
                                                            404, json={"url": "https://example.com/hook"},
                                                            code="not_found"),
    "list webhooks": lambda w: Probe("list_webhooks", "GET", f"/v1/vendors/{w.vendor_account}/webhooks", 200,
                                     owners=frozenset({"vendor"})),
    "list webhooks at a wallet": lambda w: Probe("list_webhooks", "GET", f"/v1/vendors/{w.client_wallet}/webhooks",
                                                 404, code="not_found"),
    "delete an absent webhook": lambda w: Probe("delete_webhook", "DELETE",
                                                f"/v1/vendors/{w.vendor_account}/webhooks/{ABSENT}", 404,
                                                owners=frozenset({"vendor"}), code="not_found"),
    "delete a webhook at absent account": lambda w: Probe("delete_webhook", "DELETE",
                                                          f"/v1/vendors/{ABSENT}/webhooks/{ABSENT}", 404,
                                                          code="not_found"),
    "list webhook deliveries": lambda w: Probe("list_webhook_deliveries", "GET",
                                               f"/v1/vendors/{w.vendor_account}/webhooks/{w.webhook}/deliveries", 200,
                                               owners=frozenset({"vendor"})),
    "list deliveries of other vendor's webhook": lambda w: Probe(
        "list_webhook_deliveries", "GET", f"/v1/vendors/{w.other_vendor_account}/webhooks/{w.webhook}/deliveries",
        404, owners=frozenset({"other_vendor"}), code="not_found"),
    "place a hold": lambda w: Probe("create_hold", "POST", "/v1/holds", 201, owners=frozenset({"client"}),
                                    json=_transfer(w.client_wallet, w.vendor_account)),
    "place a hold from absent account": lambda w: Probe("create_hold", "POST", "/v1/holds", 422,
                                                        json=_transfer(ABSENT, w.vendor_account),
                                                        code="account_not_found"),
    "read hold": lambda w: Probe("get_hold", "GET", f"/v1/holds/{w.held['id']}", 200,
                                 owners=frozenset({"client", "vendor"})),
    "read absent hold": lambda w: Probe("get_hold", "GET", f"/v1/holds/{ABSENT}", 404, code="not_found"),
    # Each caller that may capture or void finds the hold already closed by an earlier one, or not:
    # the first to act gets 201; so the probes act on a hold that is already closed (422).
    "capture a closed hold": lambda w: Probe("capture_hold", "POST", f"/v1/holds/{w.held['closed']}/capture", 422,
                                             owners=frozenset({"vendor"}), json={}, code="hold_not_pending"),
    "capture absent hold": lambda w: Probe("capture_hold", "POST", f"/v1/holds/{ABSENT}/capture", 404, json={},
                                           code="not_found"),
    "void a closed hold": lambda w: Probe("void_hold", "POST", f"/v1/holds/{w.held['closed']}/void", 422,
                                          owners=frozenset({"client", "vendor"}), code="hold_not_pending"),
    "void absent hold": lambda w: Probe("void_hold", "POST", f"/v1/holds/{ABSENT}/void", 404, code="not_found"),
    "pay in a batch": lambda w: Probe("create_batch", "POST", "/v1/batches", 200, json={
        "mode": "independent", "items": [_item(_transfer(w.client_wallet, w.vendor_account), "transfer")]}),
    "list transfers": lambda w: Probe("list_transfers", "GET", "/v1/transfers", 200, params={"limit": 1}),
    "search transfers of an account": lambda w: Probe("list_transfers", "GET", "/v1/transfers", 200,
                                                      params={"account_id": w.client_wallet, "metadata.order": "1"}),
    "search client's statement": lambda w: Probe("get_statement", "GET", f"/v1/accounts/{w.client_wallet}/entries",
                                                 200, owners=frozenset({"client"}),
                                                 params={"metadata.order": "1", "kind": "transfer"}),
    "search vendor's transfers": lambda w: Probe("list_verifications", "GET",
                                                 f"/v1/vendors/{w.vendor_account}/transfers", 200,
                                                 owners=frozenset({"vendor"}),
                                                 params={"metadata.order": "1", "from": "2026-01-01T00:00:00Z"}),
}
MATRIX_CASES = 585  # len(PROBES) * len(ACTORS), stated so a shrinking matrix is noticed


# The write probes whose single route a batch item takes, with the item's type: in a batch each
# gets, as its item's answer, what the matrix expects of its single route.
BATCH_ITEMS: dict[str, str] = {
    "pay from client's wallet": "transfer", "pay from other client's wallet": "transfer",
    "pay from vendor's account": "transfer", "pay from absent account": "transfer",
    "refund payment": "refund", "refund absent transfer": "refund",
    "place a hold": "hold", "place a hold from absent account": "hold",
    "capture a closed hold": "capture", "capture absent hold": "capture",
    "void a closed hold": "void", "void absent hold": "void",
}


def _item(body: dict | None, kind: str, path: str = "") -> dict:
    """A batch item of `kind` with the body of its single route; the id in `path` (a refund's
    transfer, a capture's or void's hold) becomes its field."""
    item = {"type": kind, "idempotency_key": str(uuid.uuid4()), **(body or {})}
    if kind == "refund":
        item["transfer_id"] = path.split("/")[3]
    elif kind in ("capture", "void"):
        item["hold_id"] = path.split("/")[3]
    return item


def expected(probe: Probe, actor: str) -> tuple[int, str | None]:
    """What the contract says `actor` gets for `probe`: (status, problem code or None)."""
    if probe.route in PUBLIC_ROUTES:
        return probe.found, None
    role = ACTORS[actor]
    if role is None:
        return 401, "unauthenticated"
    reach = CONTRACT_ROLES[probe.route].get(role)
    if reach is None or (reach == OWN and actor not in probe.owners):
        return 403, "forbidden"
    return probe.found, probe.code


def test_the_matrix_covers_every_route_of_the_contract_with_every_caller():
    routes = {probe(_placeholder_world()).route for probe in PROBES.values()}
    assert routes == set(CONTRACT_ROLES) | PUBLIC_ROUTES
    assert len(PROBES) * len(ACTORS) == MATRIX_CASES
    print(f"\nauthorization matrix: {len(PROBES)} requests x {len(ACTORS)} callers = {MATRIX_CASES} cases")


def _placeholder_world() -> World:
    ids = {actor: ABSENT for actor in ACTORS}
    return World(ids, {}, ABSENT, ABSENT, ABSENT, ABSENT, {"id": ABSENT, "position": 0},
                 held={"id": ABSENT, "closed": ABSENT})


@pytest_asyncio.fixture(scope="module")
async def world(stack) -> World:
    client = await stack.funded_wallet(FUNDS)
    other = await stack.funded_wallet(FUNDS)
    vendor, other_vendor = await stack.vendor(), await stack.vendor()
    auditor_id, auditor = await stack.principal("auditor")
    paid = await stack.transfer(client.token, client.account_id, vendor.account_id, PAID)
    assert paid.status == 201, paid.text
    tokens = {
        "admin": f"Bearer {stack.admin}", "auditor": f"Bearer {auditor}", "client": f"Bearer {client.token}",
        "other_client": f"Bearer {other.token}", "vendor": f"Bearer {vendor.token}",
        "other_vendor": f"Bearer {other_vendor.token}", "no_token": "",
        "unknown_token": "Bearer lt_" + uuid.uuid4().hex, "malformed_header": f"Basic {client.token}",
    }
    ids = {"client": client.owner_id, "other_client": other.owner_id, "vendor": vendor.owner_id,
           "other_vendor": other_vendor.owner_id, "auditor": auditor_id}
    webhook = await stack.client.post(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token,
                                      json={"url": "https://example.com/hook"})
    assert webhook.status == 201, webhook.text
    holds = []
    for _ in range(2):
        reply = await stack.client.post("/v1/holds", token=client.token, key=str(uuid.uuid4()),
                                        json=_transfer(client.account_id, vendor.account_id))
        assert reply.status == 201, reply.text
        holds.append(reply.body["id"])
    closed = await stack.client.post(f"/v1/holds/{holds[1]}/void", token=client.token, key=str(uuid.uuid4()))
    assert closed.status == 201, closed.text
    return World(ids, tokens, client.account_id, other.account_id, vendor.account_id, other_vendor.account_id,
                 paid.body, webhook=webhook.body["id"], held={"id": holds[0], "closed": holds[1]})


@pytest.mark.parametrize("actor", list(ACTORS))
@pytest.mark.parametrize("probe_name", list(PROBES))
async def test_authorization(stack, world: World, probe_name: str, actor: str):
    probe = PROBES[probe_name](world)
    headers = {"Authorization": world.tokens[actor]} if world.tokens[actor] else {}
    key = str(uuid.uuid4()) if probe.method == "POST" else None
    reply = await stack.client.request(probe.method, probe.path, json=probe.json, params=probe.params,
                                       headers=headers, key=key)
    status, code = expected(probe, actor)
    assert (reply.status, reply.code) == (status, code), reply.text


@pytest_asyncio.fixture(scope="module", autouse=True)
async def signed_tree_head(stack, world, tmp_path_factory) -> None:
    """A signed tree head exists, so that the latest one can be read (404 before the first)."""
    from proofs import signing as checkpoint
    from proofs import tree

    key = checkpoint.load_or_create_key(tmp_path_factory.mktemp("authz") / "key.pem")
    async with await stack.superuser() as conn:
        await tree.sign_head(conn, key)


@pytest.mark.parametrize("actor", list(ACTORS))
@pytest.mark.parametrize("probe_name", list(BATCH_ITEMS))
async def test_authorization_of_a_batch_item_is_its_single_routes(stack, world: World, probe_name: str, actor: str):
    probe = PROBES[probe_name](world)
    batch = {"mode": "independent", "items": [_item(probe.json, BATCH_ITEMS[probe_name], probe.path)]}
    headers = {"Authorization": world.tokens[actor]} if world.tokens[actor] else {}
    reply = await stack.client.post("/v1/batches", json=batch, headers=headers)
    whole = expected(PROBES["pay in a batch"](world), actor)
    if whole != (200, None):
        assert (reply.status, reply.code) == whole, reply.text
        return
    assert reply.status == 200, reply.text
    answer = reply.body["items"][0]
    assert (answer["status"], answer["body"].get("code")) == expected(probe, actor), reply.text
