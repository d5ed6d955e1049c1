"""The stack: the API and the projector running in the test's event loop on the session's servers,
a small HTTP client that speaks the contract, and further API listeners for tests that need two.

Every test makes its own principals and accounts, so tests never depend on each other's journal
positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from typing import Any

import aiohttp
import psycopg
import pytest_asyncio
from aiohttp import web

from api.app import build_app
from cli import processes
from ledger import principals
from ledger.config import Settings
from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port

TEARDOWN_S_MAX = 30
# A Fernet key for webhook secrets at rest (tests only).
WEBHOOK_KEY = "dGVzdHMtb25seS13ZWJob29rLWtleS0zMi1ieXRlcyE="


@dataclasses.dataclass
class Reply:
    status: int
    headers: Any
    body: Any
    text: str

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


class Client:
    """HTTP against the running API, with the contract's headers spelled once."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def request(self, method: str, path: str, *, token: str | None = None, json: Any = None,
                      data: bytes | None = None, key: str | None = None, headers: dict | None = None,
                      params: dict | None = None) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if key is not None:
            sent["Idempotency-Key"] = key
        async with self.session.request(method, self.base + path, json=json, data=data, headers=sent,
                                        params=params) as response:
            text = await response.text()
            body: Any = None
            if response.content_type in ("application/json", "application/problem+json"):
                body = await response.json(content_type=None)
            return Reply(response.status, response.headers, body, text)

    async def get(self, path: str, **kw) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw) -> Reply:
        return await self.request("POST", path, **kw)


@dataclasses.dataclass
class Stack:
    settings: Settings
    client: Client
    admin: str
    database_url: str
    postgres: EmbeddedPostgres
    nats: EmbeddedNats
    app: web.Application

    async def principal(self, role: str) -> tuple[str, str]:
        reply = await self.client.post("/v1/principals", token=self.admin, json={"role": role, "name": f"test {role}"})
        assert reply.status == 201, reply.text
        return reply.body["id"], reply.body["token"]

    async def account(self, kind: str, *, owner: str | None = None, currency: str = "USD") -> str:
        body = {"kind": kind, "currency": currency}
        if owner is not None:
            body["owner_id"] = owner
        reply = await self.client.post("/v1/accounts", token=self.admin, json=body)
        assert reply.status == 201, reply.text
        return reply.body["id"]

    async def transfer(self, token: str, source: str, target: str, amount: int, *, currency: str = "USD",
                       key: str | None = None, **extra) -> Reply:
        body = {"from_account_id": source, "to_account_id": target, "amount": amount, "currency": currency, **extra}
        return await self.client.post("/v1/transfers", token=token, json=body, key=key or str(uuid.uuid4()))

    async def funded_wallet(self, amount: int, *, currency: str = "USD") -> "Wallet":
        """A client principal owning a wallet funded with `amount` from a fresh system account."""
        client_id, token = await self.principal("client")
        wallet = await self.account("wallet", owner=client_id, currency=currency)
        if amount:
            funding = await self.account("system", currency=currency)
            reply = await self.transfer(self.admin, funding, wallet, amount, currency=currency)
            assert reply.status == 201, reply.text
        return Wallet(client_id, token, wallet)

    async def vendor(self, *, currency: str = "USD") -> "Vendor":
        vendor_id, token = await self.principal("vendor")
        return Vendor(vendor_id, token, await self.account("vendor", owner=vendor_id, currency=currency))

    async def balance(self, account_id: str) -> int:
        reply = await self.client.get(f"/v1/accounts/{account_id}", token=self.admin)
        assert reply.status == 200, reply.text
        return reply.body["balance"]

    async def superuser(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)


@dataclasses.dataclass
class Wallet:
    owner_id: str
    token: str
    account_id: str


@dataclasses.dataclass
class Vendor:
    owner_id: str
    token: str
    account_id: str


@pytest_asyncio.fixture(scope="session")
async def stack(migrated, postgres, nats_server):
    # A small waiters cap, so the test of the cap stays within one client's 100 connections.
    # Webhook receivers in tests are loopback servers the tests start, hence allow_private.
    settings = Settings().replace(database={"url": migrated}, nats={"url": nats_server.url}, http={"port": free_port()},
                                  committer={"outbox_sweep_interval_ms": 200}, api={"waiters_max": 50},
                                  webhooks={"key": WEBHOOK_KEY, "allow_private": True})
    app = build_app(settings)
    runner = await _listening(app, settings)
    projector = asyncio.create_task(processes.projector(settings), name="test-projector")
    _, admin = await principals.create_at(migrated, role="admin", name="test admin")
    async with aiohttp.ClientSession() as session:
        client = Client(session, f"http://{settings.http.host}:{settings.http.port}")
        yield Stack(settings, client, admin, migrated, postgres, nats_server, app)
    async def teardown() -> None:
        projector.cancel()
        await asyncio.gather(projector, return_exceptions=True)
        await runner.cleanup()

    closing = asyncio.create_task(teardown(), name="stack-teardown")
    done, _ = await asyncio.wait([closing], timeout=TEARDOWN_S_MAX)
    if not done:
        print_pending_tasks()
        raise AssertionError(f"the stack did not shut down within {TEARDOWN_S_MAX}s")
    closing.result()


@contextlib.asynccontextmanager
async def api_with(stack: Stack, **changes):
    """Another API process's worth in the test's event loop, on a free port: its own app, committer
    and connection pools on the session's database and NATS, configured like the session's API but
    for `changes` (a small limit, another database URL). Yields a `Client` of it."""
    async with api_at(stack.settings.replace(http={"port": free_port()}, **changes)) as client:
        yield client


@contextlib.asynccontextmanager
async def api_at(settings: Settings):
    """An API listening in the test's event loop as `settings` say; yields a `Client` of it."""
    runner = await _listening(build_app(settings), settings)
    try:
        async with aiohttp.ClientSession() as session:
            yield Client(session, f"http://{settings.http.host}:{settings.http.port}")
    finally:
        await runner.cleanup()


async def _listening(app: web.Application, settings: Settings) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.http.host, settings.http.port).start()
    return runner


def print_pending_tasks() -> None:
    """A shutdown that hangs is a bug: say where every task is stuck (the whole await chain)."""
    for task in asyncio.all_tasks():
        chain, awaited = [], task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        print(f"--- pending task {task.get_name()}: " + " -> ".join(chain))
