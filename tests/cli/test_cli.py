"""The command line as an operator meets it: every error is one line on stderr, never a traceback,
with the exit code `ledger.exits.Exit` declares (2 usage or configuration, 3 a dependency is down).

Each test runs the real `ledger` command as a subprocess.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
import uuid

import pytest

from ledger.config import ConfigError, Settings
from ledger.exits import Exit
from tests.plugins import children
from tests.plugins.helpers import poll_until
from tools.embedded import free_port

pytestmark = pytest.mark.slow  # child processes: every test runs the `ledger` command

UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/postgres"
COMMAND_S_MAX = 60.0
READY_S_MAX = 30.0


def ledger(*argv: str, python_flags: tuple[str, ...] = (), **variables: str) -> subprocess.CompletedProcess:
    """`ledger argv...` with only `variables` of the LEDGER_ settings set."""
    return subprocess.run([sys.executable, *python_flags, "-m", "cli", *argv],
                          env=children.environment(inherit_ledger=False, **variables),
                          capture_output=True, text=True, timeout=COMMAND_S_MAX)


def assert_one_line(done: subprocess.CompletedProcess, exit_code: int, line: str) -> None:
    assert (done.returncode, done.stderr.splitlines(), done.stdout) == (exit_code, [line], ""), done.stderr


# ---- settings ----------------------------------------------------------------------------------


def test_a_setting_that_is_not_a_whole_number_is_one_line_and_exit_2():
    done = ledger("api", LEDGER_BATCH_MAX="abc")
    assert_one_line(done, Exit.USAGE, "ledger: LEDGER_BATCH_MAX='abc' is not a whole number")


def test_a_setting_out_of_range_is_one_line_and_exit_2():
    done = ledger("api", LEDGER_STREAM_REPLICAS="7")
    assert_one_line(done, Exit.USAGE, "ledger: LEDGER_STREAM_REPLICAS=7 is out of range 1..5")


def test_settings_are_checked_under_python_minus_o_too():
    done = ledger("projector", python_flags=("-O",), LEDGER_BATCH_MAX="0")
    assert_one_line(done, Exit.USAGE, "ledger: LEDGER_BATCH_MAX=0 is out of range 1..10000")


def test_a_database_url_libpq_cannot_parse_is_a_configuration_error():
    done = ledger("migrate", LEDGER_DATABASE_URL="nonsense")
    assert done.returncode == Exit.USAGE and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("ledger: LEDGER_DATABASE_URL is not a connection string"), done.stderr


@pytest.mark.parametrize("section, field, value, message", [
    ("committer", "batch_max", 0, "LEDGER_BATCH_MAX=0 is out of range 1..10000"),
    ("api", "pool_size_max", 2.5, "LEDGER_POOL_SIZE_MAX=2.5 is not a whole number"),
    ("api", "rate_per_s", float("nan"), "LEDGER_RATE_PER_S=nan is out of range 0..1000000"),
    ("nats", "stream_replicas", 6, "LEDGER_STREAM_REPLICAS=6 is out of range 1..5"),
    ("api", "db_role", "", "LEDGER_DB_ROLE='' must not be empty"),
    ("committer", "outbox_sweep_interval_ms", 0, "outbox_sweep_interval_ms=0 is out of range 1..60000"),
])
def test_settings_built_in_code_are_checked_the_same_way(section, field, value, message):
    with pytest.raises(ConfigError) as raised:
        Settings().replace(**{section: {field: value}})
    assert str(raised.value) == message


async def test_a_valid_environment_starts_the_api_and_it_stops_cleanly(migrated, nats_server, tmp_path):
    port = free_port()
    variables = dict(LEDGER_DATABASE_URL=migrated, LEDGER_NATS_URL=nats_server.url, LEDGER_HTTP_PORT=str(port),
                     LEDGER_BATCH_MAX="64", LEDGER_STREAM_REPLICAS="1", LEDGER_HTTP_REUSE_PORT="no")
    api = children.start(["api"], tmp_path / "api.log", children.environment(inherit_ledger=False, **variables))
    try:
        assert _ready(f"http://127.0.0.1:{port}/healthz", api), (tmp_path / "api.log").read_text()[-3000:]
    finally:
        code = children.stop(api, timeout_s=COMMAND_S_MAX)
    assert code == Exit.OK, (tmp_path / "api.log").read_text()[-3000:]


def _ready(url: str, process: subprocess.Popen) -> bool:
    def answered() -> bool:
        if process.poll() is not None:
            return True  # exited: nothing more to wait for, and not ready
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    try:
        poll_until(answered, timeout_s=READY_S_MAX, what=f"{url} answering")
    except AssertionError:
        return False
    return process.poll() is None


# ---- unreachable dependencies and usage errors -------------------------------------------------


@pytest.mark.parametrize("command", ["migrate", "audit", "checkpoint", "principal"])
def test_an_unreachable_database_is_one_line_and_exit_3(command, tmp_path):
    argv = {"checkpoint": ["--key", str(tmp_path / "key.pem")],
            "principal": ["create", "--role", "admin", "--name", "ops"]}.get(command, [])
    done = ledger(command, *argv, LEDGER_DATABASE_URL=UNREACHABLE_DATABASE_URL)
    assert done.returncode == Exit.UNREACHABLE, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"ledger {command}: the database is unreachable: "), done.stderr


def test_a_negative_audit_position_is_a_usage_error():
    done = ledger("audit", "--from", "-1")
    assert_one_line(done, Exit.USAGE,
                    "ledger audit: argument --from: -1 is negative; positions start at 0 (see `ledger audit --help`)")


def test_an_unknown_command_is_a_usage_error():
    done = ledger("frobnicate")
    assert done.returncode == Exit.USAGE and len(done.stderr.splitlines()) == 1, done.stderr


# ---- principals and tokens ----------------------------------------------------------------------


async def test_principal_commands_create_rotate_list_and_revoke_tokens(stack):
    import asyncio
    import json

    async def run(*argv: str) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(ledger, "principal", *argv, "--json", LEDGER_DATABASE_URL=stack.database_url)

    created = await run("create", "--role", "client", "--name", "cli client")
    assert created.returncode == 0, created.stderr
    principal = json.loads(created.stdout)
    assert principal["role"] == "client" and principal["token"].startswith("lt_")
    rotated = await run("token", principal["id"])
    assert rotated.returncode == 0, rotated.stderr
    second = json.loads(rotated.stdout)
    listed = json.loads((await run("list", principal["id"])).stdout)["items"]
    assert [item["id"] for item in listed][-1] == second["id"] and len(listed) == 2
    assert all("token" not in item and item["revoked_at"] is None for item in listed)
    first_id = listed[0]["id"]
    for token in (principal["token"], second["token"]):
        assert (await stack.client.get(f"/v1/accounts/{uuid.uuid4()}", token=token)).status == 403
    revoked = await run("revoke", principal["id"], first_id)
    assert revoked.returncode == 0, revoked.stderr
    listed = json.loads((await run("list", principal["id"])).stdout)["items"]
    assert [item["revoked_at"] is not None for item in listed] == [True, False]
    unknown = await run("revoke", principal["id"], str(uuid.uuid4()))
    assert unknown.returncode == 1 and len(unknown.stderr.splitlines()) == 1, unknown.stderr


HUNG_STOP = """
import asyncio, sys
import cli
cli.STOP_GRACE_S = 0.5

async def deaf_to_cancel():
    print("running", flush=True)
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # a dependency that never lets the stop finish

cli.run_until_signal(deaf_to_cancel())
"""
HUNG_STOP_EXIT_S_MAX = 20.0  # the grace (0.5 s here) plus an interpreter's start on a loaded machine


def test_a_stop_that_outlives_its_grace_names_what_it_waits_on_and_exits_3():
    child = subprocess.Popen([sys.executable, "-c", HUNG_STOP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "running\n"
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=HUNG_STOP_EXIT_S_MAX)
    finally:
        child.kill()
    assert child.returncode == Exit.UNREACHABLE, stderr
    assert stderr.startswith("stop overdue after 0.5 s;"), stderr
    assert "deaf_to_cancel -> tasks.py" in stderr, stderr  # where it waits, down to the innermost await
