"""A highly available stand-in for the production topology, from the same wheels as `embedded.py`:
PostgreSQL streaming replication with a synchronous standby (`PostgresPair`), and a 3-node NATS
JetStream cluster (`NatsCluster`).

Tooling only (the bank test's `--topology ha`); the runtime never imports it. The services find
the primary by themselves through a libpq multi-host URL with `target_session_attrs=read-write`;
what this module does is what an operator (or Patroni) would do: promote the standby when the
primary dies, point `synchronous_standby_names` at the next standby, and rebuild that standby
from the new primary with `pg_basebackup -R`. The admin SQL of that lives here, not in a store.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from tools.embedded import EmbeddedNats, EmbeddedPostgres, ServerStartError, free_port

PROMOTE_TIMEOUT_S = 60
BASEBACKUP_TIMEOUT_S = 120.0
SYNC_TIMEOUT_S = 60.0
SYNC_POLL_S = 0.05
ADMIN_CONNECT_TIMEOUT_S = 10
NODE_NAMES = ("pg_a", "pg_b")


class ReplicaNode(EmbeddedPostgres):
    """One PostgreSQL node of the pair, primary or standby. Both share one superuser password (a
    standby's data directory is a byte copy of its primary's, the role's SCRAM secret included),
    accept replication connections over TCP with that password, and are ready when they serve
    clients as a primary ("ready") or as a hot standby ("standby")."""

    def __init__(self, *, data_dir: Path, port: int, name: str, password_path: Path,
                 settings: dict[str, str] | None = None) -> None:
        super().__init__(data_dir=data_dir, port=port, settings=settings)
        self.node_name = name
        self._password_path = password_path

    @property
    def password_path(self) -> Path:
        return self._password_path

    @property
    def is_standby(self) -> bool:
        return (self.data_dir / "standby.signal").exists()

    def admin_connect(self) -> psycopg.Connection:
        """The superuser over the unix socket (trusted; its directory is 0700)."""
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres",
                               autocommit=True, connect_timeout=ADMIN_CONNECT_TIMEOUT_S)

    def _write_hba(self) -> None:
        super()._write_hba()
        with open(self.data_dir / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 scram-sha-256\n")

    def _set_password(self) -> None:
        if not self.is_standby:  # a standby is read-only; it has the primary's password already
            super()._set_password()

    def _ready(self) -> bool:
        assert self._proc is not None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self._proc.pid) and lines[7].strip() in ("ready", "standby")

    def run_tool(self, name: str, *args: str, cwd: Path, timeout_s: float) -> None:
        """A bundled program (pg_ctl, pg_basebackup) as the user that owns the data directory, in
        `cwd` and given paths relative to it: the chdir happens before the switch of user, so the
        program needs no search permission on `cwd`'s ancestors, which anyone may take back at any
        time (pytest makes /tmp/pytest-of-<user> 0700 again whenever a session starts)."""
        done = subprocess.run([str(self.bin(name)), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              cwd=cwd, timeout=timeout_s, **self._popen_user)
        if done.returncode != 0:
            raise ServerStartError(f"{name} failed with code {done.returncode}:\n{done.stdout}{done.stderr}")


@dataclass
class FailoverTimes:
    """Seconds of each step of one failover, from the SIGKILL of the primary."""

    promoted_s: float
    standby_in_sync_s: float


class PostgresPair:
    """A primary and a synchronous standby on two fixed ports, so one multi-host URL always names
    both: `synchronous_commit=on` and `synchronous_standby_names` naming the standby, so a COMMIT
    returns only once the standby has flushed it, and a promoted standby has every acknowledged
    transaction. The duck type of `EmbeddedPostgres` the chaos `Stack` uses (`url`, `running`,
    `start`, `stop`, `kill`), plus `failover`."""

    def __init__(self, root: Path, *, settings: dict[str, str] | None = None) -> None:
        self.root = root
        password_path = root / "pg.password"
        settings = {"synchronous_commit": "on", "wal_level": "replica", "hot_standby": "on",
                    "wal_keep_size": "256MB", **(settings or {})}
        self.nodes = [ReplicaNode(data_dir=root / name, port=free_port(), name=name, password_path=password_path,
                                  settings=settings) for name in NODE_NAMES]
        self.primary, self.standby = self.nodes
        self.failing_over = False
        self.failovers = 0

    @property
    def password(self) -> str:
        return self.primary.password

    @property
    def url(self) -> str:
        """Both nodes; libpq (and psycopg) try them in order and keep the one that accepts writes."""
        hosts = ",".join(f"{node.host}:{node.port}" for node in self.nodes)
        return f"postgresql://postgres:{self.password}@{hosts}/postgres?target_session_attrs=read-write"

    @property
    def running(self) -> bool:
        """True while a failover is under way (a node down on purpose), or when both nodes run."""
        return self.failing_over or all(node.running for node in self.nodes)

    def start(self) -> None:
        """First start: the primary, then the standby built from it. Afterwards: restart any node
        that is down, in the role it had."""
        if not (self.primary.data_dir / "PG_VERSION").exists():
            self.primary.start()
            self._name_sync_standby(self.primary, self.standby)
            self._rebuild_standby()
            return
        for node in (self.primary, self.standby):
            node.start()
        self._wait_in_sync()

    def stop(self) -> None:
        self.primary.stop()  # first, so it waits for no standby while it shuts down
        self.standby.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def failover(self) -> FailoverTimes:
        """What a failover manager does when the primary dies: SIGKILL it, promote the standby,
        name the dead node's slot as the next synchronous standby, and rebuild it from the new
        primary. Until the rebuilt standby streams, COMMITs wait: no transaction is acknowledged
        that only one node holds.

        A standby that was down (`standby.stop()`) is started first, after the primary's death,
        so it can no longer stream: it is promoted with only what it had when it went down, as
        happens when the primary dies while its standby is away."""
        self.failing_over = True
        started = time.monotonic()
        try:
            dead, survivor = self.primary, self.standby
            dead.kill()
            survivor.start()  # a no-op when it runs
            survivor.run_tool("pg_ctl", "promote", "-w", "-t", str(PROMOTE_TIMEOUT_S), "-D", ".",
                              cwd=survivor.data_dir, timeout_s=PROMOTE_TIMEOUT_S + 5)
            self.primary, self.standby = survivor, dead
            self._name_sync_standby(self.primary, self.standby)
            promoted_s = time.monotonic() - started
            self._rebuild_standby()
            self.failovers += 1
            return FailoverTimes(promoted_s=promoted_s, standby_in_sync_s=time.monotonic() - started)
        finally:
            self.failing_over = False

    def _name_sync_standby(self, primary: ReplicaNode, standby: ReplicaNode) -> None:
        with primary.admin_connect() as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                sql.Literal(standby.node_name)))
            conn.execute("SELECT pg_reload_conf()")

    def _rebuild_standby(self) -> None:
        """A fresh copy of the primary in the standby's directory (its old log kept beside it),
        started as a streaming standby named for `synchronous_standby_names`."""
        standby, primary = self.standby, self.primary
        standby.kill()
        if standby.log_path.exists():
            shutil.copyfile(standby.log_path, self.root / f"{standby.node_name}.{self.failovers}.log")
        shutil.rmtree(standby.data_dir, ignore_errors=True)
        standby.data_dir.mkdir(mode=0o700, parents=True)
        if standby._user is not None:
            os.chown(standby.data_dir, standby._user.pw_uid, standby._user.pw_gid)
        conninfo = f"host={primary.host} port={primary.port} user=postgres password={self.password}"
        # The copy streams its WAL under another name, so it never counts as the synchronous standby:
        # only the standby itself, once it streams, may let a COMMIT return.
        standby.run_tool("pg_basebackup", "-D", ".", "-R", "-X", "stream", "-c", "fast",
                         "-d", f"{conninfo} application_name={standby.node_name}_basebackup",
                         cwd=standby.data_dir, timeout_s=BASEBACKUP_TIMEOUT_S)
        with open(standby.data_dir / "postgresql.auto.conf", "a") as conf:  # the last setting wins
            conf.write(f"primary_conninfo = '{conninfo} application_name={standby.node_name}'\n")
        standby.log_path.write_bytes(b"")  # a byte copy of the primary's log until now
        standby.start()
        self._wait_in_sync()

    def _wait_in_sync(self) -> None:
        """Until the primary reports the standby as its synchronous one, streaming."""
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        state = None
        while time.monotonic() < deadline:
            try:
                with self.primary.admin_connect() as conn:
                    state = conn.execute("SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                                         (self.standby.node_name,)).fetchone()
            except psycopg.OperationalError:
                state = None
            if state == ("streaming", "sync"):
                return
            time.sleep(SYNC_POLL_S)
        raise ServerStartError(f"standby {self.standby.node_name} not in sync after {SYNC_TIMEOUT_S:g}s: {state}")


class NatsNode(EmbeddedNats):
    """One server of a JetStream cluster: its own store, a route to every peer, a stable name."""

    def __init__(self, *, data_dir: Path, port: int, name: str, cluster_port: int, routes: list[str]) -> None:
        super().__init__(data_dir=data_dir, port=port)
        self.server_name = name
        self.cluster_port = cluster_port
        self.routes = routes

    def _command(self) -> list[str]:
        return [*super()._command(), "--server_name", self.server_name, "--cluster_name", "ledger",
                "--cluster", f"nats://{self.host}:{self.cluster_port}", "--routes", ",".join(self.routes)]


class NatsCluster:
    """Three NATS servers with JetStream, routed to each other, on 127.0.0.1 only. The duck type
    of `EmbeddedNats` the chaos `Stack` uses; `url` is the seed list (comma-separated), as
    `LEDGER_NATS_URL` takes it."""

    def __init__(self, root: Path, *, size: int = 3) -> None:
        ports = [(free_port(), free_port()) for _ in range(size)]
        cluster_urls = [f"nats://127.0.0.1:{cluster_port}" for _, cluster_port in ports]
        self.nodes = [NatsNode(data_dir=root / f"nats-n{index + 1}", port=port, name=f"n{index + 1}",
                               cluster_port=cluster_port, routes=[u for u in cluster_urls if u != cluster_urls[index]])
                      for index, (port, cluster_port) in enumerate(ports)]
        self.restarting = False

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def running(self) -> bool:
        return self.restarting or all(node.running for node in self.nodes)

    def start(self) -> None:
        """Every node that is down. JetStream needs a quorum to answer, so the nodes are spawned
        together and waited for together (one alone never reports ready on a fresh cluster)."""
        down = [node for node in self.nodes if not node.running]
        for node in down:
            node._prepare()
        # EmbeddedNats.start blocks until ready: start them from threads so they can meet.
        with concurrent.futures.ThreadPoolExecutor(len(down) or 1) as pool:
            for future in [pool.submit(node.start) for node in down]:
                future.result()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()
