"""Real `ledger` processes for the tests that need signals and exit codes as production has them:
one way to start a child, and one way to stop it (a signal, a bounded wait, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

STOP_S_MAX = 15.0  # a clean stop takes a second or two; a loaded machine gets the rest
KILLED_S_MAX = 5.0


def environment(*, inherit_ledger: bool = True, **variables: str) -> dict[str, str]:
    """This process's environment plus `variables`; with `inherit_ledger=False` none of its own
    LEDGER_ settings, so the child sees exactly the ones given. Never the metrics port: two
    processes cannot both listen on it."""
    inherited = {k: v for k, v in os.environ.items() if inherit_ledger or not k.startswith("LEDGER_")}
    inherited.pop("LEDGER_METRICS_PORT", None)
    return {**inherited, **variables}


def stack_environment(stack, **variables: str) -> dict[str, str]:
    """The environment of a `ledger` process on the session's database and NATS."""
    return environment(LEDGER_DATABASE_URL=stack.database_url, LEDGER_NATS_URL=stack.nats.url, **variables)


def start(argv: list[str], log_path: Path, env: dict[str, str], *, cwd: Path | None = None) -> subprocess.Popen:
    """`python -m cli argv...` in a session of its own (so a kill reaches its children too), its
    output appended to `log_path` (a restarted child keeps one log)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "cli", *argv], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(child: subprocess.Popen, *, by: signal.Signals = signal.SIGTERM, timeout_s: float = STOP_S_MAX) -> int:
    """Signal `child` and wait for it; one that outlives `timeout_s` is killed with its group.
    Returns its exit code (negative: the signal that ended it)."""
    if child.poll() is None:
        child.send_signal(by)
    try:
        return child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        return child.wait(KILLED_S_MAX)


@contextlib.contextmanager
def running(argv: list[str], log_path: Path, env: dict[str, str], **options) -> Iterator[subprocess.Popen]:
    """A started child, stopped on the way out whatever happened (see `stop`)."""
    child = start(argv, log_path, env)
    try:
        yield child
    finally:
        stop(child, **options)
