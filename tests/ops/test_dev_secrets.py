"""`ledger dev` keeps its secrets to its own user: files 0600, passwords on PostgreSQL's TCP port,
NATS logins with per-service publish rights (security review, finding 6, and NATS auth of finding 1).

One real `ledger dev` in a subprocess, on free ports, in a temporary directory.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
from pathlib import Path

import aiohttp
import nats
import psycopg
import pytest

from tests.conftest import eventually
from tests.plugins.helpers import poll_until
from tests.plugins import children
from tools.embedded import free_port

pytestmark = pytest.mark.slow  # a child process: a whole `ledger dev`

START_S_MAX = 60
STOP_S_MAX = 30


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("dev")
    data = root / ".ledger"
    env = children.environment(LEDGER_DEV_PG_PORT=str(free_port()), LEDGER_DEV_NATS_PORT=str(free_port()))
    child = children.start(["dev", "--data-dir", str(data), "--port", str(free_port())], root / "dev.log", env,
                           cwd=root)
    try:
        _wait_for_text(root / "dev.log", "Ledger is running", child)
        yield data, json.loads((data / "dev.json").read_text())
    finally:
        children.stop(child, by=signal.SIGINT, timeout_s=STOP_S_MAX)


def _wait_for_text(path: Path, text: str, child: subprocess.Popen) -> None:
    def written() -> bool:
        assert child.poll() is None, f"ledger dev exited:\n{path.read_text(errors='replace')[-3000:]}"
        return text in path.read_text(errors="replace")

    poll_until(written, timeout_s=START_S_MAX, what="ledger dev up")


def _private(path: Path) -> bool:
    """No read or write bit for group or others (a root-run stack keeps o+x on directories so the
    unprivileged PostgreSQL user can traverse them, but never r or w)."""
    return stat.S_IMODE(path.stat().st_mode) & 0o066 == 0


def test_dev_files_are_readable_by_their_owner_only(dev_stack):
    data, _ = dev_stack
    assert _private(data)
    for name in ("dev.json", "postgres.password", "nats/nats.conf", "nats/api.password", "nats/projector.password"):
        assert (data / name).exists(), name
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert _private(data / "nats")


def test_postgres_refuses_tcp_without_the_password(dev_stack):
    _, info = dev_stack
    url = info["database_url"]
    without = url.replace(url.split("//", 1)[1].split("@", 1)[0], "postgres")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(without, connect_timeout=5).close()
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_nats_refuses_anonymous_clients(dev_stack):
    _, info = dev_stack
    anonymous = "nats://" + info["nats_url"].split("@", 1)[1]
    with pytest.raises(Exception):
        await nats.connect(anonymous, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0)


async def test_only_the_api_may_publish_ledger_events(dev_stack):
    data, info = dev_stack
    for user, subject in (("reader", "ledger.v1.transfers.committed"), ("projector", "ledger.v1.transfers.committed"),
                          ("api", "ledger.v1.projector.watermark"), ("reader", "ledger.v1.projector.watermark")):
        password = (data / "nats" / f"{user}.password").read_text().strip()
        url = f"nats://{user}:{password}@" + info["nats_url"].split("@", 1)[1]
        violations: list[str] = []

        async def on_error(error: Exception) -> None:
            violations.append(str(error))

        client = await nats.connect(url, allow_reconnect=False, error_cb=on_error)
        try:
            await client.publish(subject, b'{"position": 999999999}')
            await client.flush()
            async def refused() -> bool:  # the server's -ERR arrives asynchronously
                return any("permissions violation" in v.lower() for v in violations)

            await eventually(refused, timeout_s=2, interval_s=0.02, what=f"a permissions violation for {user}")
        finally:
            await client.close()
        assert any("permissions violation" in v.lower() for v in violations), (user, subject, violations)


def test_the_webhook_key_is_kept_to_its_owner(dev_stack):
    data, _ = dev_stack
    assert stat.S_IMODE((data / "webhook.key").stat().st_mode) == 0o600


async def test_the_dev_stack_delivers_webhooks_with_the_reader_login(dev_stack):
    """The worker runs inside `ledger dev` and consumes as NATS `reader`; loopback URLs are allowed."""
    from standardwebhooks.webhooks import Webhook as StandardWebhook

    from tests.plugins.receivers import Receiver

    _, info = dev_stack
    tokens, accounts = info["tokens"], info["accounts"]
    receiver = await Receiver().start()
    try:
        async with aiohttp.ClientSession(info["api_url"]) as http:
            async with http.post(f"/v1/vendors/{accounts['vendor']}/webhooks", json={"url": receiver.url},
                                 headers={"Authorization": f"Bearer {tokens['vendor']}"}) as reply:
                assert reply.status == 201, await reply.text()
                secret = (await reply.json())["secret"]
            async with http.post("/v1/transfers", headers={"Authorization": f"Bearer {tokens['client']}",
                                                           "Idempotency-Key": "webhook-dev-test"},
                                 json={"from_account_id": accounts["wallet"], "to_account_id": accounts["vendor"],
                                       "amount": 1, "currency": "USD"}) as reply:
                assert reply.status == 201, await reply.text()
        async def delivered() -> bool:
            return bool(receiver.requests)

        await eventually(delivered, timeout_s=20, what="a webhook delivery")
        event = StandardWebhook(secret).verify(receiver.requests[0].body, receiver.requests[0].headers)
        assert event["type"] == "transfer.received"
    finally:
        await receiver.stop()
