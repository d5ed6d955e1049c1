"""Production shape: the CockroachDB subset of the SQL, metrics, structured logs and request ids,
the Python client against the running stack, the bundled API reference, and the deploy files."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import re
import uuid
from pathlib import Path

import aiohttp
import nats
import psycopg
import pytest
from nats.js.api import DeliverPolicy
from psycopg import crdb

import schemas
from api import docs
from ledger import bus, config, db, dialect, logs, store
from client import LedgerClient, LedgerProblem
from tools.embedded import free_port
from projector import consumer
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]

# What CockroachDB lacks, or DESIGN.md keeps out of shared code.
FORBIDDEN_SQL = {
    "LISTEN/NOTIFY": r"\bLISTEN\b|\bNOTIFY\b|\bpg_notify\b",
    "advisory locks": r"\bpg_advisory",
    "deferrable constraints": r"\bDEFERRABLE\b",
    "triggers": r"\bCREATE\s+(OR\s+REPLACE\s+)?(CONSTRAINT\s+)?TRIGGER\b",
    "stored functions": r"\bCREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE)\b",
    "serial types": r"\b(SMALL|BIG)?SERIAL\b",
    "UPSERT": r"\bUPSERT\b",
    "hash-sharded indexes": r"\bUSING\s+HASH\b",
}


def forbidden_features(sql_text: str, *, allowed: frozenset[str] = frozenset()) -> list[str]:
    return [name for name, pattern in FORBIDDEN_SQL.items()
            if name not in allowed and re.search(pattern, sql_text, re.IGNORECASE)]


def sql_literals(path: Path) -> list[str]:
    """Every string constant in a module except docstrings: its SQL, with f-string parts."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


# ---- CockroachDB dialect --------------------------------------------------------------------


def test_cockroachdb_migrations_use_only_the_shared_subset():
    statements = [s for _, _, text in store.migration_files() for s in store.split_statements(text)]
    assert statements, "no migration statements found"
    for statement in statements:
        assert forbidden_features(statement) == [], statement
    index = dialect.COCKROACHDB.journal_index_ddl()
    assert re.search(r"USING\s+HASH", index), "the CockroachDB journal index is hash-sharded"
    assert forbidden_features(index, allowed=frozenset({"hash-sharded indexes"})) == []
    assert dialect.POSTGRESQL.journal_index_ddl() == ""


SQL_MODULES = [
    "ledger/store/migrations.py", "ledger/store/accounts.py", "ledger/store/journal.py", "ledger/store/audit.py",
    "projector/store.py", "webhooks/store.py", "proofs/store.py",
]


@pytest.mark.parametrize("module", SQL_MODULES)
def test_sql_in_the_stores_uses_only_the_shared_subset(module):
    literals = sql_literals(ROOT / module)
    assert any("SELECT" in text for text in literals)
    assert forbidden_features("\n".join(literals)) == []


def test_dialect_is_chosen_from_the_server_version():
    crdb_version = "CockroachDB CCL v24.3.6 (x86_64-pc-linux-gnu, built 2025/02/10 17:05:48, go1.22.8)"
    assert dialect.from_version(crdb_version) is dialect.COCKROACHDB
    assert dialect.from_version("PostgreSQL 17.2 on x86_64-pc-linux-gnu") is dialect.POSTGRESQL
    assert dialect.COCKROACHDB.connection_class is crdb.AsyncCrdbConnection
    assert dialect.POSTGRESQL.connection_class is psycopg.AsyncConnection


def test_cockroachdb_restart_transaction_errors_are_retried():
    error = psycopg.OperationalError("restart transaction: TransactionRetryWithProtoRefreshError: WriteTooOld")
    assert dialect.is_retryable(error)
    assert dialect.is_retryable(psycopg.errors.SerializationFailure("could not serialize access"))
    assert not dialect.is_retryable(psycopg.errors.UniqueViolation("duplicate key"))


# ---- metrics --------------------------------------------------------------------------------

REQUIRED_METRICS = (
    "ledger_http_requests_total",
    "ledger_http_request_duration_seconds",
    "ledger_commit_batch_size",
    "ledger_commit_serialization_retries_total",
    "ledger_commit_queue_depth",
    "ledger_publish_lag_entries",
    "ledger_projector_lag_seconds",
    "ledger_projector_watermark_position",
    "ledger_events_published_total",
    "ledger_events_publish_failed_total",
)


async def test_metrics_cover_http_commits_publishing_projector_and_events(stack):
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    assert (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10)).status == 201
    reply = await stack.client.get("/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    families = set(re.findall(r"^# TYPE (\S+) ", reply.text, re.MULTILINE))
    assert [name for name in REQUIRED_METRICS if name not in families] == []
    latency = re.compile(r'^ledger_http_request_duration_seconds_count\{[^}]*route="/v1/transfers"[^}]*status="201"',
                         re.MULTILINE)
    assert latency.search(reply.text), "latency is labelled by route and status"


async def test_a_projector_of_its_own_serves_metrics_on_the_metrics_port(stack):
    settings = stack.settings.replace(http={"metrics_port": free_port()})
    projector = asyncio.create_task(consumer.serve(settings, metrics_listener=True))
    try:
        async with aiohttp.ClientSession() as http:
            async def scraped() -> str | None:
                try:
                    async with http.get(f"http://{settings.http.host}:{settings.http.metrics_port}/metrics") as response:
                        return await response.text() if response.status == 200 else None
                except aiohttp.ClientConnectionError:
                    return None

            text = await eventually(scraped)
    finally:
        projector.cancel()
        await asyncio.gather(projector, return_exceptions=True)
    assert "ledger_projector_watermark_position" in text


# ---- logs and request ids -------------------------------------------------------------------


def json_lines(emit) -> list[dict]:
    """Run `emit(logger)` against a logger wired like the CLI's JSON setup; parse what it wrote."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.RedactSecrets())
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(f"ledger.test.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    emit(logger)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_logs_are_one_object_a_line_with_the_request_id_and_extras():
    token = logs.REQUEST_ID.set("req-42")
    try:
        [line] = json_lines(lambda log: log.info("committed %d entries", 3, extra={"batch": 3}))
    finally:
        logs.REQUEST_ID.reset(token)
    assert line["msg"] == "committed 3 entries" and line["level"] == "info" and line["batch"] == 3
    assert line["request_id"] == "req-42" and line["logger"].startswith("ledger.test.")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])


def test_logs_never_carry_tokens_or_passwords():
    secret = "lt_" + "A1b2" * 10

    def emit(log: logging.Logger) -> None:
        log.warning("header was Authorization: Bearer %s", secret)
        log.warning("url postgresql://ledger:hunter2@roach1:26257/ledger", extra={"token": secret})
        try:
            raise ValueError(f"bad token {secret}")
        except ValueError:
            log.exception("failed")

    text = json.dumps(json_lines(emit))
    assert secret not in text and "A1b2A1b2" not in text and "hunter2" not in text
    assert "Bearer [redacted]" in text and "lt_[redacted]" in text and "ledger:[redacted]@roach1" in text


def test_log_format_is_json_unless_a_person_is_watching(monkeypatch):
    named = config.Settings.from_env({"LEDGER_LOG_FORMAT": "json"}).log.format
    assert logs.chosen_format(named, "text") == "json"
    unset = config.Settings.from_env({}).log.format
    assert logs.chosen_format(unset, "text") == "text"
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a TTY: a collector reads it
    assert logs.chosen_format(unset) == "json"


async def test_a_request_id_is_echoed_and_one_is_made_when_missing(stack):
    given = await stack.client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    made = await stack.client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])


async def test_the_event_of_a_transfer_carries_its_request_id(stack):
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    connection = await nats.connect(stack.nats.url)
    try:
        events = await connection.jetstream().subscribe(
            bus.SUBJECT, stream=bus.STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        body = {"from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "amount": 7,
                "currency": "USD"}
        reply = await stack.client.post("/v1/transfers", token=wallet.token, json=body, key=str(uuid.uuid4()),
                                        headers={"X-Request-Id": "abc-123"})
        assert reply.status == 201 and reply.headers["X-Request-Id"] == "abc-123"
        message = await _event_of(events, reply.body["id"])
    finally:
        await connection.close()
    assert message.headers[bus.REQUEST_ID] == "abc-123"
    assert json.loads(message.data)["position"] == reply.body["position"]


async def _event_of(subscription, transfer_id: str, *, timeout_s: float = 10.0):
    async with asyncio.timeout(timeout_s):
        while True:
            message = await subscription.next_msg(timeout=timeout_s)
            if message.headers and message.headers.get(bus.MSG_ID) == transfer_id:
                return message


# ---- the Python client ----------------------------------------------------------------------


@pytest.fixture
async def admin_client(stack):
    async with LedgerClient(stack.client.base, token=stack.admin) as client:
        yield client


async def _payer_and_vendor(admin: LedgerClient, *, funds: int):
    """A client principal with a funded wallet and a vendor principal with its account."""
    payer = await admin.create_principal(role="client", name="client test payer")
    seller = await admin.create_principal(role="vendor", name="client test vendor")
    wallet = await admin.create_account(kind="wallet", currency="EUR", owner_id=payer.id)
    shop = await admin.create_account(kind="vendor", currency="EUR", owner_id=seller.id, name="shop")
    funding = await admin.create_account(kind="system", currency="EUR")
    await admin.transfer(from_account_id=funding.id, to_account_id=wallet.id, amount=funds, currency="EUR",
                         idempotency_key=str(uuid.uuid4()))
    return admin.as_principal(payer.token), wallet, admin.as_principal(seller.token), shop


async def test_client_pays_and_reads_back_typed_answers(admin_client):
    payer, wallet, _, shop = await _payer_and_vendor(admin_client, funds=1000)
    paid = await payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=250, currency="EUR",
                                idempotency_key="client-pay-1", reference="order 9", metadata={"order": "9"})
    assert isinstance(paid, schemas.Transfer) and paid.status == "committed" and paid.amount == 250
    again = await payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=250, currency="EUR",
                                 idempotency_key="client-pay-1", reference="order 9", metadata={"order": "9"})
    assert again == paid
    assert await payer.get_transfer(paid.id) == paid
    account = await payer.get_account(wallet.id)
    assert isinstance(account, schemas.Account) and account.balance == 750 and account.position >= paid.position


async def test_client_raises_typed_problems(admin_client):
    payer, wallet, _, shop = await _payer_and_vendor(admin_client, funds=10)
    with pytest.raises(LedgerProblem) as broke:
        await payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=11, currency="EUR",
                             idempotency_key=str(uuid.uuid4()))
    assert (broke.value.status, broke.value.code) == (422, "insufficient_funds")
    with pytest.raises(LedgerProblem) as invalid:
        await payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=0, currency="EUR",
                             idempotency_key=str(uuid.uuid4()))
    assert (invalid.value.status, invalid.value.code) == (400, "validation_error")
    assert [issue.path for issue in invalid.value.errors] == ["$.amount"]
    with pytest.raises(LedgerProblem) as stranger:
        await admin_client.as_principal("lt_not-a-token").journal_head()
    assert (stranger.value.status, stranger.value.code) == (401, "unauthenticated")


async def test_client_verifies_and_pages_vendor_transfers(admin_client):
    payer, wallet, seller, shop = await _payer_and_vendor(admin_client, funds=1000)
    paid = [
        await payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=amount, currency="EUR",
                             idempotency_key=str(uuid.uuid4()))
        for amount in (1, 2, 3)
    ]
    verified = await seller.verification(shop.id, paid[-1].id, min_position=paid[-1].position, wait_ms=5000)
    assert isinstance(verified, schemas.Verification) and verified.status == "verified"
    assert (verified.transfer_id, verified.amount, verified.hash) == (paid[-1].id, 3, paid[-1].hash)
    pages = [page async for page in seller.vendor_transfers(shop.id, limit=2)]
    assert [len(page.items) for page in pages] == [2, 1] and pages[-1].next is None
    assert [item.transfer_id for page in pages for item in page.items] == [t.id for t in paid]


async def test_client_streams_the_journal_and_reads_the_head(admin_client):
    payer, wallet, _, shop = await _payer_and_vendor(admin_client, funds=1000)
    first = await payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=5, currency="EUR",
                                 idempotency_key=str(uuid.uuid4()))
    second = await payer.transfer(from_account_id=wallet.id, to_account_id=shop.id, amount=6, currency="EUR",
                                  idempotency_key=str(uuid.uuid4()))
    entries = [entry async for entry in admin_client.journal(after=first.position - 1, limit=2)]
    assert all(isinstance(entry, schemas.JournalEntry) for entry in entries)
    assert [(e.transfer_id, e.hash) for e in entries] == [(first.id, first.hash), (second.id, second.hash)]
    assert sum(posting.amount for posting in entries[0].postings) == 0
    head = await admin_client.journal_head()
    assert head.position >= second.position
    tail = [entry async for entry in admin_client.journal(after=head.position - 1)]
    assert tail[0].position == head.position and tail[0].hash == head.hash


async def test_client_reports_readiness(admin_client):
    ready = await admin_client.ready()
    assert ready.status == "ready" and ready.checks == {"database": "ok", "nats": "ok", "tree_heads": "ok"}
    assert (await admin_client.health()).status == "ok"
    assert (await admin_client.openapi())["openapi"].startswith("3.1")


# ---- /docs ----------------------------------------------------------------------------------


async def test_docs_page_renders_the_reference_from_a_bundled_asset(stack):
    page = await stack.client.get("/docs")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    asset_url = f"{docs.STATIC_PREFIX}/{docs.RENDERER}"
    assert f'src="{asset_url}"' in page.text and 'spec-url="/openapi.json"' in page.text
    assert "https://" not in page.text and "default-src 'none'" in page.headers["Content-Security-Policy"]
    asset = await stack.client.get(asset_url)
    assert asset.status == 200 and asset.headers["Content-Type"].startswith("text/javascript")
    assert len(asset.text) > 100_000 and "Redoc" in asset.text[:2000]
    assert (await stack.client.get(f"{docs.STATIC_PREFIX}/redoc.LICENSE")).status == 200
    missing = await stack.client.get(f"{docs.STATIC_PREFIX}/secrets.txt")
    assert missing.status == 404 and missing.code == "not_found"


# ---- deploy/ --------------------------------------------------------------------------------


def test_compose_file_has_the_production_shape():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]
    for node in ("roach1", "roach2", "roach3"):
        assert "--join=roach1,roach2,roach3" in services[node]["command"]
    assert "cockroach init" in services["roach-init"]["command"][0]
    assert services["db-setup"]["depends_on"]["roach-init"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["db-setup"]["condition"] == "service_completed_successfully"
    assert services["api"]["command"] == ["api"] and services["api"]["deploy"]["replicas"] == 2
    assert services["projector"]["environment"]["LEDGER_METRICS_PORT"] == "9100"
    assert services["api"]["environment"]["LEDGER_STREAM_REPLICAS"] == "3"
    for name in ("nats1", "nats2", "nats3"):
        assert services[name]["command"][-2:] == ["--name", name]
    scraped = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert "names: [api]" in scraped and "port: 9100" in scraped


def test_a_failed_background_round_is_info_when_a_dependency_is_away_and_error_with_its_trace_when_a_bug(caplog):
    import nats.errors

    log = logging.getLogger("test.rounds")
    outages = [store.StoreUnavailable("the database is away"), psycopg.OperationalError("connection refused"),
               nats.errors.NoServersError(), ConnectionRefusedError(111, "refused"), TimeoutError()]
    bugs = [psycopg.DataError("cannot dump lists of mixed types; got: float, int"), KeyError("x"), TypeError("y")]
    assert [logs.is_outage(error) for error in outages] == [True] * len(outages)
    assert [logs.is_outage(error) for error in bugs] == [False] * len(bugs)
    with caplog.at_level(logging.INFO, logger="test.rounds"):
        logs.round_failed(log, "%s failed", outages[0], "sweep")
        logs.round_failed(log, "%s failed", bugs[0], "recorder")
    (outage, bug) = caplog.records
    assert (outage.levelname, outage.getMessage(), outage.exc_info) == ("INFO", "sweep failed (the database is away)", None)
    assert bug.levelname == "ERROR" and bug.getMessage().startswith("recorder failed (cannot dump")
    assert bug.exc_info[1] is bugs[0]  # the traceback goes with it


async def test_only_the_derived_writers_commit_without_waiting_for_the_wal_flush(stack):
    """The projector's and the webhook worker's pools are relaxed (a commit lost in a crash is
    done again from the journal); every other pool, the committer's above all, waits for the flush."""
    relaxed = db.make_pool(stack.database_url, role=store.PROJECTOR_ROLE, size_max=1, relaxed=True)
    durable = db.make_pool(stack.database_url, role=store.PROJECTOR_ROLE, size_max=1)
    for pool in (relaxed, durable):
        await pool.open(wait=True)
    try:
        settings = []
        for pool in (relaxed, durable):
            async with pool.connection() as conn:
                settings.append((await (await conn.execute("SHOW synchronous_commit")).fetchone())[0])
        assert settings == ["off", "on"]
    finally:
        for pool in (relaxed, durable):
            await pool.close()
    assert dialect.COCKROACHDB.relaxed_session() is None  # CockroachDB has no such switch
