"""Webhooks under the bank test: a receiver on loopback, an endpoint per vendor account, and the
check that every payment to a vendor reached the receiver at least once, correctly signed.

The receiver misbehaves on purpose: the first attempt of about one event in twenty answers 500,
and of about one in a hundred hangs past the worker's 10 s timeout, so retries are exercised; the
fault injector also SIGKILLs the `ledger webhooks` process (`webhooks_kill`). Signatures are
checked with the `standardwebhooks` library when it is installed (the test extra), else with HMAC
written out here from the specification, never with the project's signing code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid

import psycopg
from aiohttp import web

from webhooks.events import EVENT_ID_NAMESPACE, EVENTS_BY_KIND
from tools.chaos.options import Options
from tools.chaos.report import Observer, Report
from tools.embedded import free_port

FAIL_FIRST_SHARE = 0.05
HANG_FIRST_SHARE = 0.01
HANG_S = 12.0  # past the worker's 10 s per attempt
DELIVERY_GRACE_S = 45.0  # past the projection's convergence: a lease (30 s) and a 5 s retry
POLL_S = 0.2


def _verify(secret: str, headers, body: bytes) -> bool:
    try:
        from standardwebhooks.webhooks import Webhook
    except ImportError:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return any(hmac.compare_digest(expected, s) for s in headers.get("webhook-signature", "").split())
    try:
        Webhook(secret).verify(body, dict(headers))
        return True
    except Exception:
        return False


class WebhookWitness:
    def __init__(self, options: Options, log: Observer, report: Report) -> None:
        self.o = options
        self.log = log
        self.report = report
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.secrets: dict[str, str] = {}  # vendor account -> secret
        self.endpoints: list[str] = []
        self.delivered: set[str] = set()  # event ids answered 2xx with a good signature
        self.attempts: dict[str, int] = {}
        self.requests = 0
        self.bad_signatures = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{vendor}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def register(self, stack, vendor_accounts: list[str]) -> None:
        for account in vendor_accounts:
            async with stack.session.post(
                f"{stack.apis[0].url}/v1/vendors/{account}/webhooks", json={"url": f"{self.url}/{account}"},
                headers={"Authorization": f"Bearer {stack.admin_token}"},
            ) as reply:
                body = await reply.json()
                assert reply.status == 201, body
            self.secrets[account] = body["secret"]
            self.endpoints.append(body["id"])
        self.log.say(f"webhooks: an endpoint for each of {len(vendor_accounts)} vendor accounts at {self.url}/<vendor>")

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        secret = self.secrets.get(request.match_info["vendor"])
        if secret is None or not _verify(secret, request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=400)
        event_id = request.headers["webhook-id"]
        if json.loads(body)["id"] != event_id:
            self.bad_signatures += 1
            return web.Response(status=400)
        attempt = self.attempts[event_id] = self.attempts.get(event_id, 0) + 1
        draw = uuid.UUID(event_id).int % 10_000 / 10_000  # the same draw on every attempt
        if attempt == 1 and draw < HANG_FIRST_SHARE:
            await asyncio.sleep(HANG_S)
        elif attempt == 1 and draw < HANG_FIRST_SHARE + FAIL_FIRST_SHARE:
            return web.Response(status=500)
        self.delivered.add(event_id)
        return web.Response(status=204)

    async def check(self, database_url: str, *, deadline: float) -> None:
        """Every event the journal implies for a registered vendor (payments received, refunds
        made, hold steps) is one the receiver took, signed, by `deadline`; no event names an
        entry the journal does not hold."""
        expected: set[str] = set()
        while True:
            with contextlib.suppress(psycopg.Error):
                expected = await self._expected(database_url)
                if expected <= self.delivered:
                    break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S)
        missing = expected - self.delivered
        phantom = self.delivered - expected
        repeats = sum(n - 1 for n in self.attempts.values())
        self.report.webhooks = (f"{'ok' if not (missing or phantom or self.bad_signatures) else 'FAILED'}:"
                                f" {len(expected)} events, {len(self.delivered & expected)} delivered,"
                                f" {len(missing)} missing, {len(phantom)} phantom, {self.bad_signatures} bad signatures;"
                                f" {self.requests} requests ({repeats} repeats)")
        if missing:
            self.log.violation(f"{len(missing)} webhook events never delivered, e.g. {sorted(missing)[:3]}")
        if phantom:
            self.log.violation(f"{len(phantom)} webhook events for no transfer in the journal")
        if self.bad_signatures:
            self.log.violation(f"{self.bad_signatures} webhook requests with a bad signature")

    async def _expected(self, database_url: str) -> set[str]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True, connect_timeout=2) as conn:
            rows = await (await conn.execute(
                "SELECT j.transfer_id, j.kind, j.from_account_id, j.to_account_id FROM journal j"
                " WHERE j.to_account_id = ANY(%s::UUID[]) OR j.from_account_id = ANY(%s::UUID[])",
                (list(self.secrets), list(self.secrets)),
            )).fetchall()
        # The same mapping the worker uses: each kind's event types, each for the party it names.
        vendors = {uuid.UUID(str(v)) for v in self.secrets}
        expected = set()
        for transfer_id, kind, source, target in rows:
            for event_type, party in EVENTS_BY_KIND.get(kind or "transfer", ()):
                if (target if party == "to" else source) in vendors:
                    expected.add(str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{transfer_id}/{event_type}")))
        return expected
