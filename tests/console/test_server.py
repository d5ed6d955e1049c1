"""The console's server side without a browser: cookie flags, security headers, CSRF, sessions."""

from __future__ import annotations

import uuid

from console.sessions import SessionStore
from tests.conftest import eventually

PAGES = ("/sign-in", "/static/console.css")


async def test_sign_in_keeps_the_token_server_side_behind_a_strict_http_only_cookie(console):
    client_id, token = await console.stack.principal("client")
    async with console.session() as browser:
        headers = await browser.sign_in(token)
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie  # plain HTTP here; over TLS it is Secure
        assert token not in cookie
        status, _, page = await browser.get("/wallets")
        assert status == 200 and "Wallets" in page and token not in page
        async with browser.http.get(console.url, allow_redirects=True) as home:
            assert home.status == 200 and str(home.url).endswith("/console/wallets")


async def test_every_console_answer_carries_the_security_headers(console):
    _, token = await console.stack.principal("vendor")
    async with console.session() as browser:
        answers = [await browser.get(path) for path in PAGES]
        await browser.sign_in(token)
        answers.append(await browser.get("/vendor"))
        answers.append(await browser.get("/no-such-page"))
    for status, headers, _ in answers:
        csp = headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
    assert [status for status, _, _ in answers] == [200, 200, 200, 404]


async def test_a_bad_token_is_refused_in_words_and_no_session_is_made(console):
    async with console.session() as browser:
        status, headers, page = await browser.post("/sign-in", {"token": "not-a-real-token"})
        assert status == 401 and "Set-Cookie" not in headers
        assert "not valid" in page and '"code"' not in page
        status, headers, _ = await browser.get("/wallets")
        assert status == 303 and headers["Location"] == "/console/sign-in"


async def test_a_write_without_the_csrf_token_is_refused_and_writes_nothing(console):
    stack = console.stack
    wallet, vendor = await stack.funded_wallet(1_000), await stack.vendor()
    pay = {"from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "amount": "100",
           "idempotency_key": str(uuid.uuid4())}
    async with console.session() as browser:
        await browser.sign_in(wallet.token)
        status, _, page = await browser.post("/pay", pay)
        assert status == 403 and "expired" in page
        status, _, _ = await browser.post("/pay", {**pay, "csrf": "forged"})
        assert status == 403
        csrf = await browser.csrf("/wallets")
        status, _, _ = await browser.post("/pay", {**pay, "csrf": csrf}, Origin="https://evil.example")
        assert status == 403
        status, _, _ = await browser.post("/pay", {**pay, "csrf": csrf}, **{"Sec-Fetch-Site": "cross-site"})
        assert status == 403
    assert await stack.balance(wallet.account_id) == 1_000


async def test_a_form_sent_twice_pays_once_and_api_errors_are_words(console):
    stack = console.stack
    wallet, vendor = await stack.funded_wallet(1_000), await stack.vendor()
    async with console.session() as browser:
        await browser.sign_in(wallet.token)
        csrf = await browser.csrf("/wallets")
        pay = {"csrf": csrf, "from_account_id": wallet.account_id, "to_account_id": vendor.account_id,
               "amount": "300", "idempotency_key": str(uuid.uuid4())}
        first, second = await browser.post("/pay", pay), await browser.post("/pay", pay)
        assert first[0] == second[0] == 201 and "already sent" in second[2]
        status, _, page = await browser.post("/pay", {**pay, "amount": "5000", "idempotency_key": str(uuid.uuid4())})
        assert status == 422 and "cannot afford" in page and "problem" not in page and "Traceback" not in page
    assert await stack.balance(wallet.account_id) == 700


async def test_sign_out_ends_the_session_at_once(console):
    _, token = await console.stack.principal("auditor")
    async with console.session() as browser:
        await browser.sign_in(token)
        csrf = await browser.csrf("/audit")
        status, headers, _ = await browser.post("/sign-out", {"csrf": csrf})
        assert status == 303 and headers["Location"] == "/console/sign-in"
        status, headers, _ = await browser.get("/audit")
        assert status == 303 and headers["Location"] == "/console/sign-in"


async def test_a_revoked_token_ends_its_session_on_the_next_page(console):
    stack = console.stack
    principal_id, token = await stack.principal("client")
    async with console.session() as browser:
        await browser.sign_in(token)
        tokens = (await stack.client.get(f"/v1/principals/{principal_id}/tokens", token=stack.admin)).body["items"]
        reply = await stack.client.request("DELETE", f"/v1/principals/{principal_id}/tokens/{tokens[0]['id']}",
                                           token=stack.admin)
        assert reply.status == 204

        async def signed_out() -> bool:
            status, headers, _ = await browser.get("/wallets")
            return status == 303 and headers["Location"] == "/console/sign-in"
        # The console's API process refuses the token within its auth cache time (below a second).
        assert await eventually(signed_out, timeout_s=3, what="the revoked session to end")


async def test_the_proof_route_gives_the_inclusion_at_the_latest_signed_head(console):
    stack = console.stack
    wallet, vendor = await stack.funded_wallet(100), await stack.vendor()
    paid = (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 40)).body
    signed = await console.sign_tree_head()
    async with console.session() as browser:
        await browser.sign_in(vendor.token)
        async with browser.http.get(f"{console.url}/payments/{paid['id']}/proof.json") as response:
            assert response.status == 200
            proof = await response.json()
    assert proof["head"]["tree_size"] == signed["tree_size"] >= paid["position"]
    assert proof["inclusion"]["position"] == paid["position"]
    assert proof["inclusion"]["tree_size"] == signed["tree_size"]


def test_sessions_end_when_idle_too_old_or_least_recently_used_past_the_bound():
    now = [0.0]
    store = SessionStore(sessions_max=2, idle_s_max=10, age_s_max=100, clock=lambda: now[0])
    idle = store.create(token="a", principal_id="p", role="client", name="a")
    now[0] = 11
    assert store.get(idle.id) is None
    old = store.create(token="b", principal_id="p", role="client", name="b")
    for step in range(1, 12):  # used every 9 s, never idle, until its absolute age passes
        now[0] = 11 + 9 * step
        assert (store.get(old.id) is not None) == (9 * step <= 100)
    first = store.create(token="c", principal_id="p", role="client", name="c")
    second = store.create(token="d", principal_id="p", role="client", name="d")
    store.get(first.id)  # used: the least recently used is now `second`
    third = store.create(token="e", principal_id="p", role="client", name="e")
    assert len(store) == 2 and store.get(second.id) is None
    assert store.get(first.id) is not None and store.get(third.id) is not None
    assert first.csrf_matches(first.csrf) and not first.csrf_matches(second.csrf) and not first.csrf_matches(None)


def test_the_pinned_key_is_the_setting_else_the_signing_keys_public_half_never_none_made_up(tmp_path):
    from cli.processes import console_public_key
    from ledger.config import Settings
    from proofs import signing

    key_path = tmp_path / "signing-key.pem"
    missing = Settings().replace(proofs={"signing_key": str(key_path)})
    assert console_public_key(missing) == "" and not key_path.exists()  # the API never makes a signing key
    key = signing.load_or_create_key(key_path)
    assert console_public_key(missing) == signing.public_key_hex(key)
    other = signing.public_key_hex(signing.load_or_create_key(tmp_path / "other.pem"))
    assert console_public_key(missing.replace(console={"public_key": other.upper()})) == other


def test_ledger_api_mounts_the_console_onto_the_api_unless_it_is_turned_off():
    from api.app import build_app
    from cli.processes import api_mounts
    from ledger.config import Settings

    settings = Settings()
    app = build_app(settings)
    for mount in api_mounts(settings):
        mount(app)
    paths = {resource.canonical for resource in app.router.resources()}
    assert "/console" in paths and "/v1/me" in paths
    assert api_mounts(settings.replace(console={"enabled": False})) == []
