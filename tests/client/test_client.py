"""The Python client's own behaviour: its retries (against the live stack behind a proxy that drops
a connection, and against a tiny scripted server on 127.0.0.1 for exact status sequences) and its
blocking face. Every server here listens on the loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

import schemas
from client import LedgerClient, LedgerProblem, SyncLedgerClient

LOOPBACK = "127.0.0.1"
# How long a test waits for a proxied connection to open or a proxied stream to end.
PROXY_IO_S_MAX = 10.0
# Slack on timing bounds for a loaded test machine, never on the lower bounds.
TIMING_SLACK_S = 1.0


# ---- a scripted API on the loopback -----------------------------------------------------------


@dataclasses.dataclass
class Seen:
    """What the scripted server received, one element per attempt."""

    keys: list[str | None] = dataclasses.field(default_factory=list)
    bodies: list[bytes] = dataclasses.field(default_factory=list)


Answer = tuple[int, dict, bytes]  # status, headers, body


def problem(status: int, code: str, *, retry_after_s: int | None = None) -> Answer:
    body = schemas.encode(schemas.Problem(type="about:blank", title=code, status=status, detail=code, code=code))
    headers = {"Content-Type": "application/problem+json"}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return status, headers, body


def committed(seen_body: bytes) -> Answer:
    asked = json.loads(seen_body)
    transfer = schemas.Transfer(
        id=uuid.uuid4(), from_account_id=uuid.UUID(asked["from_account_id"]),
        to_account_id=uuid.UUID(asked["to_account_id"]), amount=asked["amount"], currency=asked["currency"],
        reference=asked["reference"], metadata=asked["metadata"], status="committed", position=1,
        committed_at="2026-11-26T12:00:00.000000Z", hash="0" * 64,
    )
    return 201, {"Content-Type": "application/json"}, schemas.encode(transfer)


def created_account(seen_body: bytes) -> Answer:
    asked = json.loads(seen_body)
    account = {**asked, "owner_id": None, "balance": 0, "position": 0, "created_at": "2026-11-26T12:00:00.000000Z"}
    return 201, {"Content-Type": "application/json"}, json.dumps(account).encode()


@contextlib.asynccontextmanager
async def scripted_api(script: Callable[[int, bytes], Answer]) -> AsyncIterator[tuple[str, Seen]]:
    """A server answering every request with `script(attempt_number, body)`."""
    seen = Seen()

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        seen.keys.append(request.headers.get("Idempotency-Key"))
        seen.bodies.append(body)
        status, headers, payload = script(len(seen.bodies), body)
        return web.Response(status=status, headers=headers, body=payload)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{LOOPBACK}:{port}", seen
    finally:
        await runner.cleanup()


def pay(ledger: LedgerClient, key: str = "order-1"):
    return ledger.transfer(from_account_id=uuid.uuid4(), to_account_id=uuid.uuid4(), amount=5, currency="USD",
                           idempotency_key=key)


# ---- retries against the scripted server --------------------------------------------------------


@pytest.mark.parametrize("refusal", [problem(503, "unavailable", retry_after_s=1),
                                     problem(503, "queue_full", retry_after_s=1),
                                     problem(429, "rate_limited", retry_after_s=1)])
@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_a_refused_transfer_is_retried_after_retry_after_with_the_same_key(refusal):
    script = lambda attempt, body: refusal if attempt <= 2 else committed(body)
    async with scripted_api(script) as (url, seen), LedgerClient(url, token="t") as ledger:
        started = time.monotonic()
        paid = await pay(ledger, key="order-503")
        elapsed_s = time.monotonic() - started
    assert paid.status == "committed" and paid.amount == 5
    assert seen.keys == ["order-503"] * 3
    assert len(set(seen.bodies)) == 1
    assert elapsed_s >= 2 * 1.0  # two Retry-After: 1


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_retrying_stops_at_retry_total_s():
    script = lambda attempt, body: problem(503, "unavailable", retry_after_s=1)
    async with scripted_api(script) as (url, seen), LedgerClient(url, token="t", retry_total_s=2.8) as ledger:
        started = time.monotonic()
        with pytest.raises(LedgerProblem) as refused:
            await pay(ledger)
        elapsed_s = time.monotonic() - started
    assert (refused.value.status, refused.value.code, refused.value.retry_after_s) == (503, "unavailable", 1)
    # At 0 s, after 1..1.25 s and after 2..2.5 s (Retry-After plus jitter); a fourth would start
    # after 3 s, past the bound, so the client gives up instead of waiting.
    assert len(seen.keys) == 3
    assert 2.0 <= elapsed_s < 2.8 + TIMING_SLACK_S


async def test_a_retry_after_beyond_retry_total_s_is_not_waited_for():
    script = lambda attempt, body: problem(503, "queue_full", retry_after_s=60)
    async with scripted_api(script) as (url, seen), LedgerClient(url, token="t", retry_total_s=5) as ledger:
        started = time.monotonic()
        with pytest.raises(LedgerProblem) as refused:
            await pay(ledger)
        elapsed_s = time.monotonic() - started
    assert (refused.value.code, refused.value.retry_after_s, len(seen.keys)) == ("queue_full", 60, 1)
    assert elapsed_s < TIMING_SLACK_S


async def test_retrying_stops_at_retry_attempts_max_with_backoff_when_no_retry_after():
    script = lambda attempt, body: problem(503, "timeout")
    async with scripted_api(script) as (url, seen), LedgerClient(url, token="t", retry_attempts_max=3) as ledger:
        with pytest.raises(LedgerProblem) as refused:
            await pay(ledger)
    assert (refused.value.code, len(seen.keys)) == ("timeout", 3)
    assert "gave up after 3 attempts" in " ".join(refused.value.__notes__)


async def test_retry_total_s_zero_turns_retries_off():
    script = lambda attempt, body: problem(429, "rate_limited", retry_after_s=1)
    async with scripted_api(script) as (url, seen), LedgerClient(url, token="t", retry_total_s=0) as ledger:
        with pytest.raises(LedgerProblem) as refused:
            await pay(ledger)
    assert (refused.value.status, len(seen.keys)) == (429, 1)


@pytest.mark.parametrize("rejection", [problem(422, "insufficient_funds"), problem(409, "idempotency_key_reused"),
                                       problem(400, "validation_error"), problem(403, "forbidden")])
async def test_other_4xx_are_not_retried(rejection):
    async with scripted_api(lambda attempt, body: rejection) as (url, seen), LedgerClient(url, token="t") as ledger:
        with pytest.raises(LedgerProblem) as rejected:
            await pay(ledger)
    assert (rejected.value.status, len(seen.keys)) == (rejection[0], 1)


async def test_principal_creation_is_not_repeated_after_an_unknown_outcome():
    script = lambda attempt, body: problem(503, "unavailable", retry_after_s=1)
    async with scripted_api(script) as (url, seen), LedgerClient(url, token="t") as ledger:
        with pytest.raises(LedgerProblem) as refused:
            await ledger.create_principal(role="client", name="Alice")
    assert (refused.value.code, len(seen.bodies)) == ("unavailable", 1)


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_principal_creation_is_repeated_after_a_rate_limit():
    principal = {"id": str(uuid.uuid4()), "role": "client", "name": "Alice", "token": "lt_x"}
    created = (201, {"Content-Type": "application/json"}, json.dumps(principal).encode())
    script = lambda attempt, body: problem(429, "rate_limited", retry_after_s=1) if attempt == 1 else created
    async with scripted_api(script) as (url, seen), LedgerClient(url, token="t") as ledger:
        made = await ledger.create_principal(role="client", name="Alice")
    assert (str(made.id), len(seen.bodies)) == (principal["id"], 2)


async def test_account_creation_is_repeated_with_the_same_client_chosen_id():
    script = lambda attempt, body: problem(503, "unavailable") if attempt == 1 else created_account(body)
    async with scripted_api(script) as (url, seen), LedgerClient(url, token="t") as ledger:
        account = await ledger.create_account(kind="system", currency="USD")
    ids = [json.loads(body)["id"] for body in seen.bodies]
    assert len(ids) == 2 and ids[0] == ids[1] == str(account.id)


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_projection_behind_is_retried_only_when_the_caller_asked_to_wait():
    script = lambda attempt, body: problem(503, "projection_behind", retry_after_s=1)
    async with scripted_api(script) as (url, seen), LedgerClient(url, token="t", retry_total_s=1.5) as ledger:
        with pytest.raises(LedgerProblem):
            await ledger.verification(uuid.uuid4(), uuid.uuid4(), min_position=9)
        assert len(seen.keys) == 1
        with pytest.raises(LedgerProblem) as behind:
            await ledger.verification(uuid.uuid4(), uuid.uuid4(), min_position=9, wait_ms=100)
    assert (behind.value.code, len(seen.keys)) == ("projection_behind", 1 + 2)


async def test_a_refused_connection_is_retried_within_retry_total_s():
    async with scripted_api(lambda attempt, body: problem(503, "unavailable")) as (url, _):
        pass  # the port is closed again: nothing listens there any more
    async with LedgerClient(url, token="t", retry_total_s=0.5) as ledger:
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientConnectorError) as failed:
            await ledger.create_principal(role="client", name="Alice")
        elapsed_s = time.monotonic() - started
    assert "gave up after" in " ".join(failed.value.__notes__)
    assert elapsed_s < 0.5 + TIMING_SLACK_S


# ---- a dropped connection in front of the live stack ----------------------------------------------


class DroppingProxy:
    """A TCP proxy on the loopback in front of the API that forwards the first connection's request
    and then closes that connection as soon as the answer starts, without passing it on: the client
    cannot know whether its request was applied. Later connections pass through; what the API
    answered on each is kept in `answers`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.answers: list[bytearray] = []
        self._server: asyncio.AbstractServer | None = None
        self._pipes: set[asyncio.Task] = set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._connection, LOOPBACK, 0)
        return f"http://{LOOPBACK}:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await asyncio.wait_for(self._server.wait_closed(), PROXY_IO_S_MAX)

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        answer = bytearray()
        self.answers.append(answer)
        drop = len(self.answers) == 1
        upstream_reader, upstream_writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, self.upstream_port), PROXY_IO_S_MAX
        )
        upward = asyncio.create_task(self._pump(client_reader, upstream_writer))
        downward = asyncio.create_task(self._pump(upstream_reader, client_writer, answer=answer, drop=drop))
        self._pipes |= {upward, downward}
        await asyncio.wait([upward, downward], return_when=asyncio.FIRST_COMPLETED)
        for pipe in (upward, downward):
            pipe.cancel()
        await asyncio.gather(upward, downward, return_exceptions=True)
        self._pipes -= {upward, downward}
        for writer in (client_writer, upstream_writer):
            writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    answer: bytearray | None = None, drop: bool = False) -> None:
        while chunk := await reader.read(65536):
            if answer is not None:
                answer.extend(chunk)
            if drop:
                return  # the answer has started: hang up on the client instead of passing it on
            writer.write(chunk)
            await writer.drain()


async def _journal_entries_with_reference(stack, reference: str, after: int) -> list[dict]:
    reply = await stack.client.get("/v1/journal", token=stack.admin, params={"after": after})
    assert reply.status == 200, reply.text
    entries = [json.loads(line) for line in reply.text.splitlines() if line.strip()]
    return [entry for entry in entries if entry["reference"] == reference]


async def test_a_transfer_retried_after_a_dropped_connection_is_a_replay(stack):
    wallet = await stack.funded_wallet(1000)
    shop = await stack.vendor()
    head = await stack.client.get("/v1/journal/head", token=stack.admin)
    key = f"dropped-{uuid.uuid4()}"
    proxy = DroppingProxy(stack.settings.http.port)
    async with proxy as url, LedgerClient(url, token=wallet.token) as payer:
        paid = await payer.transfer(from_account_id=uuid.UUID(wallet.account_id),
                                    to_account_id=uuid.UUID(shop.account_id), amount=300, currency="USD",
                                    idempotency_key=key, reference=key)
    first, retry = (bytes(answer).lower() for answer in proxy.answers)  # exactly two connections
    assert first.startswith(b"http/1.1 201") and b"idempotency-replayed" not in first  # committed, then lost
    assert retry.startswith(b"http/1.1 201") and b"idempotency-replayed: true" in retry
    assert paid.status == "committed" and paid.amount == 300
    read_back = await stack.client.get(f"/v1/transfers/{paid.id}", token=stack.admin)
    assert (read_back.status, read_back.body["position"], read_back.body["hash"]) == (200, paid.position, paid.hash)
    assert [entry["transfer_id"] for entry in
            await _journal_entries_with_reference(stack, key, head.body["position"])] == [str(paid.id)]
    assert await stack.balance(wallet.account_id) == 700


# ---- the blocking face -------------------------------------------------------------------------


def _script_pays_and_reads_back(base_url: str, admin_token: str) -> tuple[schemas.Transfer, schemas.Account,
                                                                          list[schemas.JournalEntry]]:
    """A plain script: no asyncio, no await."""
    with SyncLedgerClient(base_url, token=admin_token) as admin:
        alice = admin.create_principal(role="client", name="sync Alice")
        wallet = admin.create_account(kind="wallet", currency="USD", owner_id=alice.id)
        shop = admin.create_account(kind="system", currency="USD")
        funding = admin.create_account(kind="system", currency="USD")
        admin.transfer(from_account_id=funding.id, to_account_id=wallet.id, amount=1000, currency="USD",
                       idempotency_key=str(uuid.uuid4()))
        payer = admin.as_principal(alice.token)
        key = str(uuid.uuid4())
        paid = payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=450, currency="USD",
                              idempotency_key=key, reference="sync order")
        again = payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=450, currency="USD",
                               idempotency_key=key, reference="sync order")
        assert again == paid and payer.get_transfer(paid.id) == paid
        entries = list(admin.journal(after=paid.position - 1, limit=1))
        return paid, payer.get_account(wallet.id), entries


async def test_the_sync_client_pays_end_to_end(stack):
    # In a thread of its own: the API under test runs on this test's event loop, which a blocking
    # call made here would block.
    paid, wallet, entries = await asyncio.to_thread(_script_pays_and_reads_back, stack.client.base, stack.admin)
    assert paid.status == "committed" and paid.amount == 450 and paid.reference == "sync order"
    assert (wallet.balance, wallet.id) == (550, paid.from_account_id)
    assert [(entry.transfer_id, entry.hash) for entry in entries] == [(paid.id, paid.hash)]


def test_the_sync_client_raises_problems_and_closes_its_loop():
    with SyncLedgerClient(f"http://{LOOPBACK}:1", retry_total_s=0) as ledger:
        with pytest.raises(aiohttp.ClientConnectorError):
            ledger.health()
        view = ledger.as_principal("lt_other")
    assert ledger._loop.is_closed() and not ledger._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        view.health()


async def test_the_client_rotates_and_revokes_tokens(stack):
    from client import LedgerClient, LedgerProblem

    async with LedgerClient(stack.client.base, token=stack.admin) as admin:
        someone = await admin.create_principal(role="auditor", name="rotating auditor")
        fresh = await admin.create_token(someone.id)
        listed = await admin.tokens(someone.id)
        assert [t.id for t in listed.items][-1] == fresh.id and len(listed.items) == 2
        await admin.revoke_token(someone.id, listed.items[0].id)
        await admin.revoke_token(someone.id, listed.items[0].id)  # twice: harmless
        old = admin.as_principal(someone.token)
        new = admin.as_principal(fresh.token)
        assert (await new.journal_head()).position >= 0
        try:
            await old.journal_head()
            refused = None
        except LedgerProblem as problem:
            refused = problem.code
        assert refused == "unauthenticated"


def _script_pays_refunds_half_and_reads_statements(base_url: str, admin_token: str) -> dict:
    """The README's worked example, as a plain script: pay, list the statement, refund half,
    the statement again, and the balance before the refund."""
    with SyncLedgerClient(base_url, token=admin_token) as admin:
        alice = admin.create_principal(role="client", name="sync Alice")
        shop_owner = admin.create_principal(role="vendor", name="sync shop")
        wallet = admin.create_account(kind="wallet", currency="USD", owner_id=alice.id)
        shop = admin.create_account(kind="vendor", currency="USD", owner_id=shop_owner.id)
        funding = admin.create_account(kind="system", currency="USD")
        admin.transfer(from_account_id=funding.id, to_account_id=wallet.id, amount=1000, currency="USD",
                       idempotency_key=str(uuid.uuid4()))
        payer, vendor = admin.as_principal(alice.token), admin.as_principal(shop_owner.token)
        paid = payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=400, currency="USD",
                              idempotency_key=str(uuid.uuid4()), reference="order 9")
        before = [item for page in payer.statement(wallet.id) for item in page.items]
        refund = vendor.refund(paid.id, amount=200, idempotency_key=str(uuid.uuid4()), reference="order 9")
        after = [item for page in payer.statement(wallet.id, limit=1) for item in page.items]
        own = [account.id for page in payer.accounts() for account in page.items]
        return {"paid": paid, "refund": refund, "before": before, "after": after, "own": own, "wallet": wallet.id,
                "at_paid": payer.account(wallet.id, at_position=paid.position),
                "by_reference": [i for page in payer.statement(wallet.id, reference="order 9") for i in page.items]}


async def test_the_client_pays_refunds_and_reads_statements(stack):
    seen = await asyncio.to_thread(_script_pays_refunds_half_and_reads_statements, stack.client.base, stack.admin)
    assert [(i.amount, i.balance_after) for i in seen["before"]] == [(1000, 1000), (-400, 600)]
    assert [(i.amount, i.balance_after, i.kind) for i in seen["after"]][-1] == (200, 800, "refund")
    assert (seen["refund"].kind, seen["refund"].refund_of) == ("refund", seen["paid"].id)
    assert seen["own"] == [seen["wallet"]] and seen["at_paid"].balance == 600
    assert [i.kind for i in seen["by_reference"]] == ["transfer", "refund"]
