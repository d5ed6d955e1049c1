"""The API process as an operator sees it: SIGTERM stops it cleanly, and a database outage gets
fast 503s (never a hang, never a 500) and heals by itself when the database returns.

Each test runs `ledger api` as a real subprocess, as production does, so signals and process
exit codes are the real ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import psycopg
import pytest

from ledger import db, principals
from tests.conftest import eventually
from tools.embedded import free_port
from tools.chaos import Child, metric_value

pytestmark = pytest.mark.slow  # child processes: `ledger api` under signals and a database outage

BURST = 300
EXIT_S_MAX = 15.0
# With the database gone, a request waits at most for the pool (then 503): never for the request timeout.
OUTAGE_ANSWER_S_MAX = db.POOL_TIMEOUT_S + 2.0
RECOVERY_S_MAX = 30.0


def _api(tmp_path: Path, database_url: str, nats_url: str) -> Child:
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")},
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_NATS_URL": nats_url,
        "LEDGER_HTTP_HOST": "127.0.0.1",
        "LEDGER_HTTP_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    return Child("api", [sys.executable, "-m", "cli", "api"], environment, tmp_path / "api.log",
                 url=f"http://127.0.0.1:{port}")


class Api:
    """A little client of one API subprocess: the admin sets up a funded wallet and a vendor."""

    def __init__(self, session: aiohttp.ClientSession, child: Child, admin: str) -> None:
        self.session, self.child, self.admin = session, child, admin

    async def call(self, method: str, path: str, *, token: str, json=None, key: str | None = None,
                   timeout_s: float = 30.0) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.session.request(method, self.child.url + path, json=json, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as reply:
            return reply.status, await reply.json(content_type=None)

    async def created(self, path: str, body: dict) -> dict:
        status, answer = await self.call("POST", path, token=self.admin, json=body)
        assert status == 201, answer
        return answer

    async def funded_wallet(self, amount: int) -> tuple[str, str]:
        """(client token, wallet id) of a wallet funded with `amount`."""
        client = await self.created("/v1/principals", {"role": "client", "name": "shutdown client"})
        wallet = await self.created("/v1/accounts", {"kind": "wallet", "currency": "USD", "owner_id": client["id"]})
        funding = await self.created("/v1/accounts", {"kind": "system", "currency": "USD"})
        status, answer = await self.call("POST", "/v1/transfers", token=self.admin, key=str(uuid.uuid4()), json={
            "from_account_id": funding["id"], "to_account_id": wallet["id"], "amount": amount, "currency": "USD"})
        assert status == 201, answer
        return client["token"], wallet["id"]

    async def vendor_account(self) -> str:
        vendor = await self.created("/v1/principals", {"role": "vendor", "name": "shutdown vendor"})
        return (await self.created("/v1/accounts", {"kind": "vendor", "currency": "USD",
                                                    "owner_id": vendor["id"]}))["id"]


async def _started(child: Child, session: aiohttp.ClientSession) -> None:
    child.start()
    assert await child.wait_ready(session, 30), child.log_path.read_text()[-3000:]


async def test_sigterm_stops_accepting_finishes_the_batches_in_flight_and_exits_zero(tmp_path, migrated,
                                                                                     nats_server):
    """The committer is held on the journal head's row lock (taken by the test), so that a whole
    burst is provably inside the process, one batch at the database and the rest queued, when
    SIGTERM arrives. The listener must close at once; once the lock is released, every request
    accepted before the signal gets its 201, and the process exits 0."""
    child = _api(tmp_path, migrated, nats_server.url)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await _started(child, session)
        try:
            _, admin = await principals.create_at(migrated, role="admin", name="shutdown admin")
            api = Api(session, child, admin)
            token, wallet = await api.funded_wallet(10 * BURST)
            vendor = await api.vendor_account()

            async def pay(number: int, client: Api = api):
                try:
                    return await client.call("POST", "/v1/transfers", token=token, key=f"burst-{number}", json={
                        "from_account_id": wallet, "to_account_id": vendor, "amount": 1 + number % 7,
                        "currency": "USD"})
                except aiohttp.ClientError as error:  # refused or cut
                    return None, repr(error)

            async with await psycopg.AsyncConnection.connect(migrated, autocommit=True) as blocker:
                await blocker.execute("BEGIN")
                await blocker.execute("SELECT position FROM journal_head WHERE id = 1 FOR UPDATE")
                first = asyncio.create_task(pay(0))
                await _until(lambda: _lock_waiters(migrated), "the committer waits for the head lock")
                rest = [asyncio.create_task(pay(n)) for n in range(1, BURST)]
                await _until(lambda: _queued(session, child, BURST - 1), f"{BURST - 1} transfers queued")

                child.proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                async with aiohttp.ClientSession() as fresh:
                    await _until(lambda: _refused(Api(fresh, child, admin)), "the listener closed")
                assert child.alive, "it must still be finishing the batches in flight"
                await blocker.execute("ROLLBACK")
                results = await asyncio.wait_for(asyncio.gather(first, *rest), EXIT_S_MAX)
            code = await child.wait_exit(EXIT_S_MAX)
            assert code == 0, child.log_path.read_text()[-3000:]
            assert time.monotonic() - signalled < EXIT_S_MAX
        finally:
            child.kill()

    assert [status for status, _ in results] == [201] * BURST, [r for r in results if r[0] != 201][:3]
    acknowledged = {answer["id"]: answer for _, answer in results}
    async with await psycopg.AsyncConnection.connect(migrated, autocommit=True) as conn:
        rows = await (await conn.execute(
            "SELECT transfer_id::TEXT, position, amount FROM journal WHERE transfer_id = ANY(%s::UUID[])",
            (list(acknowledged),))).fetchall()
        head, top = await (await conn.execute(
            "SELECT h.position, (SELECT max(position) FROM journal) FROM journal_head h WHERE h.id = 1")).fetchone()
        cursor = (await (await conn.execute("SELECT position FROM publish_cursor WHERE id = 1")).fetchone())[0]
        balance, postings = await (await conn.execute(
            "SELECT b.balance, (SELECT sum(amount) FROM postings p WHERE p.account_id = b.account_id)"
            " FROM balances b WHERE b.account_id = %s", (wallet,))).fetchone()
    assert {row[0]: (row[1], row[2]) for row in rows} == {
        i: (a["position"], a["amount"]) for i, a in acknowledged.items()}
    assert head == top
    assert cursor <= head, "the publisher cursor only moves over entries that exist"
    assert balance == postings == 10 * BURST - sum(a["amount"] for a in acknowledged.values())


async def _until(check, what: str, timeout_s: float = 15.0) -> None:
    await eventually(check, timeout_s=timeout_s, interval_s=0.02, what=what)


async def _lock_waiters(database_url: str) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")).fetchone()
    return row[0] >= 1


async def _queued(session: aiohttp.ClientSession, child: Child, count: int) -> bool:
    async with session.get(child.url + "/metrics") as reply:
        return metric_value(await reply.text(), "ledger_commit_queue_depth") >= count


async def _refused(api: Api) -> bool:
    try:
        await api.call("GET", "/healthz", token=api.admin, timeout_s=2)
    except aiohttp.ClientConnectorError:
        return True
    return False


async def _timed(call) -> tuple[float, int, dict]:
    started = time.monotonic()
    status, answer = await call
    return time.monotonic() - started, status, answer


async def test_database_down_answers_503_fast_and_recovers_by_itself(tmp_path, own_servers):
    postgres, nats_server = own_servers
    await db.migrate(postgres.url)
    _, admin = await principals.create_at(postgres.url, role="admin", name="outage admin")
    child = _api(tmp_path, postgres.url, nats_server.url)
    async with aiohttp.ClientSession() as session:
        await _started(child, session)
        try:
            api = Api(session, child, admin)
            token, wallet = await api.funded_wallet(1000)
            vendor = await api.vendor_account()
            payment = {"from_account_id": wallet, "to_account_id": vendor, "amount": 5, "currency": "USD"}
            status, _ = await api.call("GET", f"/v1/accounts/{wallet}", token=token)
            assert status == 200

            await asyncio.to_thread(postgres.kill)
            for request in (
                api.call("POST", "/v1/transfers", token=token, key="during-outage", json=payment),
                api.call("GET", f"/v1/accounts/{wallet}", token=token),
                api.call("POST", "/v1/transfers", token=token, key="during-outage", json=payment),
                api.call("GET", f"/v1/accounts/{wallet}", token=token),
            ):
                seconds, status, answer = await _timed(request)
                assert status == 503 and answer["code"] in ("unavailable", "timeout"), answer
                assert seconds < OUTAGE_ANSWER_S_MAX
            seconds, status, answer = await _timed(api.call("GET", "/readyz", token=token))
            assert status == 503 and answer["checks"]["database"] == "down", answer
            assert seconds < OUTAGE_ANSWER_S_MAX

            await asyncio.to_thread(postgres.start)
            async def paid() -> bool:
                status, answer = await api.call("POST", "/v1/transfers", token=token, key="after-outage",
                                                json=payment)
                assert status in (201, 503), answer
                return status == 201

            await eventually(paid, timeout_s=RECOVERY_S_MAX, interval_s=0.1, what="a 201 after the outage")
            status, account = await api.call("GET", f"/v1/accounts/{wallet}", token=token)
            assert status == 200 and account["balance"] == 995
            # /readyz answers from a background probe (once a second): it turns ready on its next round.
            async def ready() -> bool:
                return (await api.call("GET", "/readyz", token=token))[0] == 200

            await eventually(ready, timeout_s=RECOVERY_S_MAX, interval_s=0.1, what="/readyz ready again")
            assert await child.terminate(EXIT_S_MAX) == 0
        finally:
            child.kill()
