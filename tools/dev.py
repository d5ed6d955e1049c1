"""`ledger dev`: PostgreSQL and NATS from their wheels, migrations, API, projector and webhook worker, demo data.

Everything lives under `.ledger/` and is reused by the next run. The demo tokens are shown once
by the API (only their hashes are stored), so they are kept in `.ledger/dev.json` to be reused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
from pathlib import Path

import psycopg

from ledger import config, db, logs, principals, store
from proofs import signing as signing_keys
from ledger.exits import Exit
from tools.embedded import EmbeddedNats, EmbeddedPostgres, write_private

log = logging.getLogger("ledger.dev")

PG_PORT = 54329
NATS_PORT = 42229
DEMO_FUNDING = 1_000_000  # 10,000.00 USD in cents for the demo wallet
DEV_CHECKPOINT_INTERVAL_S = 10  # `ledger dev` signs the Merkle tree head this often (LEDGER_CHECKPOINT_INTERVAL_S overrides)


async def _existing_tokens(url: str, path: Path) -> dict | None:
    """The previous run's demo data, if every token in it still names a principal."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for token in saved.get("tokens", {}).values():
            if await store.principal_by_token_hash(conn, principals.token_digest(token)) is None:
                return None
    return saved


async def _demo_world(url: str) -> tuple[dict, dict]:
    tokens, ids = {}, {}
    for role in ("admin", "client", "vendor", "auditor"):
        principal, tokens[role] = await principals.create_at(url, role=role, name=f"demo {role}")
        ids[role] = principal.id
    accounts = {
        "funding": store.AccountRow(uuid.uuid4(), "system", "USD", None, "demo funding", None),
        "wallet": store.AccountRow(uuid.uuid4(), "wallet", "USD", ids["client"], "demo wallet", None),
        "vendor": store.AccountRow(uuid.uuid4(), "vendor", "USD", ids["vendor"], "demo coffee shop", None),
    }
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for row in accounts.values():
            await store.insert_account(conn, row)
    return tokens, {name: str(row.id) for name, row in accounts.items()}


async def _fund(api_url: str, admin: str, funding: str, wallet: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        await http.post(
            f"{api_url}/v1/transfers",
            json={"from_account_id": funding, "to_account_id": wallet, "amount": DEMO_FUNDING, "currency": "USD",
                  "reference": "demo funding"},
            headers={"Authorization": f"Bearer {admin}", "Idempotency-Key": "demo-funding"},
        )


def _examples(info: dict) -> str:
    api, t, a = info["api_url"], info["tokens"], info["accounts"]
    return f"""
Ledger is running: {api}   (Ctrl-C stops everything)

  # a client pays the vendor 4.50 USD
  curl -s -X POST {api}/v1/transfers -H 'Authorization: Bearer {t['client']}' \\
       -H 'Idempotency-Key: coffee-1' -H 'Content-Type: application/json' \\
       -d '{{"from_account_id":"{a['wallet']}","to_account_id":"{a['vendor']}","amount":450,"currency":"USD","reference":"order 1"}}'

  # the client's wallet, balance read from the write side
  curl -s {api}/v1/accounts/{a['wallet']} -H 'Authorization: Bearer {t['client']}'

  # the vendor lists what it can verify (then GET .../transfers/<id>/verification?min_position=N&wait_ms=2000)
  curl -s {api}/v1/vendors/{a['vendor']}/transfers -H 'Authorization: Bearer {t['vendor']}'

  # the vendor registers a webhook (the secret is shown once; `ledger dev` allows loopback URLs)
  curl -s -X POST {api}/v1/vendors/{a['vendor']}/webhooks -H 'Authorization: Bearer {t['vendor']}' \\
       -d '{{"url":"http://127.0.0.1:9000/hook"}}'

  # an auditor exports the journal and checks the head
  curl -s {api}/v1/journal -H 'Authorization: Bearer {t['auditor']}'
  curl -s {api}/v1/journal/head -H 'Authorization: Bearer {t['auditor']}'

The console: {api}/console/ (sign in with one of the tokens above).
Tokens and ids are in .ledger/dev.json.
"""


async def run(*, data_dir: str, port: int) -> None:
    root = Path(data_dir).absolute()
    # Tokens, passwords and the superuser URL live here: nobody but this user may read them.
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.chmod(0o700)
    postgres = EmbeddedPostgres(data_dir=root / "postgres", port=int(os.environ.get("LEDGER_DEV_PG_PORT", PG_PORT)))
    nats_server = EmbeddedNats(data_dir=root / "nats", port=int(os.environ.get("LEDGER_DEV_NATS_PORT", NATS_PORT)),
                               auth=True)
    await asyncio.to_thread(postgres.start)
    await asyncio.to_thread(nats_server.start)
    try:
        await db.migrate(postgres.url)
        settings = config.Settings.from_env(database={"url": postgres.url}, nats={"url": nats_server.url_for("api")},
                                            http={"host": "127.0.0.1", "port": port},
                                            webhooks={"key": _webhook_key(root), "allow_private": True})
        info_path = root / "dev.json"
        saved = await _existing_tokens(postgres.url, info_path)
        fresh = saved is None
        if fresh:
            tokens, accounts = await _demo_world(postgres.url)
        else:
            tokens, accounts = saved["tokens"], saved["accounts"]
        api_url = f"http://{settings.http.host}:{settings.http.port}"
        info = {"api_url": api_url, "database_url": postgres.url, "nats_url": nats_server.url_for("reader"),
                "tokens": tokens, "accounts": accounts}
        if settings.http.metrics_port is not None:
            info["metrics_url"] = f"http://{settings.http.host}:{settings.http.metrics_port}/metrics"
        write_private(info_path, json.dumps(info, indent=2) + "\n")
        # The tree follower signs tree heads often in development, with a key kept beside the data.
        signing = {"sign_interval_s": settings.proofs.sign_interval_s or DEV_CHECKPOINT_INTERVAL_S,
                   "signing_key": os.environ.get("LEDGER_SIGNING_KEY", str(root / "signing-key.pem"))}
        # Made now, not by the tree follower's first round, so the console pins its key from the start.
        signing_keys.load_or_create_key(Path(signing["signing_key"]))
        await _serve(settings, settings.replace(nats={"url": nats_server.url_for("projector")}, proofs=signing), info,
                     fund=fresh, webhook_settings=settings.replace(nats={"url": nats_server.url_for("reader")}))
    finally:
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(postgres.stop)
        print("ledger dev: stopped")


def _webhook_key(root: Path) -> str:
    """The Fernet key that encrypts webhook secrets at rest, generated once into `.ledger/` (0600);
    LEDGER_WEBHOOK_KEY, when set, wins."""
    from webhooks import events as webhooks

    if os.environ.get("LEDGER_WEBHOOK_KEY"):
        return os.environ["LEDGER_WEBHOOK_KEY"]
    path = root / "webhook.key"
    if not path.exists():
        write_private(path, webhooks.new_key() + "\n")
    return path.read_text().strip()


async def _serve(settings: config.Settings, projector_settings: config.Settings, info: dict, *, fund: bool,
                 webhook_settings: config.Settings) -> None:
    from webhooks.worker import serve as serve_webhooks
    from cli.processes import api as serve_api
    from cli.processes import projector as serve_projector

    # The API (and its console) knows the signing key's path, so the console pins its public half.
    api = asyncio.create_task(serve_api(settings.replace(proofs={"signing_key": projector_settings.proofs.signing_key})),
                              name="api")
    projector = asyncio.create_task(serve_projector(projector_settings), name="projector")
    # Its own task and NATS login (`reader`: may consume, may not publish): deliveries never share
    # the projector's consumer, so a slow receiver cannot hold the projection back.
    webhooks = asyncio.create_task(serve_webhooks(webhook_settings), name="webhooks")
    tasks = (api, projector, webhooks)
    try:
        await _wait_ready(info["api_url"])
        if fund:
            await _fund(info["api_url"], info["tokens"]["admin"], info["accounts"]["funding"], info["accounts"]["wallet"])
        print(_examples(info), flush=True)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_ready(api_url: str, timeout_s: float = 30.0) -> None:
    import aiohttp

    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{api_url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"API did not come up at {api_url}")
            await asyncio.sleep(0.1)



def main(argv: list[str] | None = None) -> int:
    import argparse

    from cli import run_until_signal

    parser = argparse.ArgumentParser(prog="ledger dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=".ledger")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LEDGER_HTTP_PORT", 8080)))
    try:
        log_settings = config.Log.from_env()
    except config.ConfigError as error:
        print(f"ledger dev: {error}", file=sys.stderr)
        return Exit.USAGE
    parser.add_argument("--log-level", default=log_settings.level)
    args = parser.parse_args(argv)
    # `ledger dev` is watched by a person; the services' lines go to a collector as JSON.
    logs.configure(level=args.log_level, log_format=logs.chosen_format(log_settings.format, "text"))
    run_until_signal(run(data_dir=args.data_dir, port=args.port))
    return 0
