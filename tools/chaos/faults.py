"""The fault injector and the processes it hurts: the embedded PostgreSQL and NATS, the `ledger`
child processes (`Child`), the seeded schedule of SIGKILLs and restarts, and the supervisor that
calls a death nobody caused a violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from ledger import db, principals
from webhooks import events as webhooks
from tools.chaos.options import (
    PROCESS_READY_S_MAX, PROCESS_STOP_S_MAX, REPO, SUPERVISE_INTERVAL_S, Fault, Options,
)
from tools.chaos.report import Observer, Report
from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port

SIGNING_INTERVAL_S = 1  # the tree follower signs a head this often while the journal grows


class Child:
    """A `ledger` subprocess we start, SIGKILL and restart; its output is appended to a log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, url: str | None = None):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.url = url
        self.proc: subprocess.Popen | None = None
        self.expected_down = False  # set while a fault (or the shutdown) has it down on purpose
        self.incarnation = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.alive
        self.incarnation += 1
        with open(self.log_path, "ab") as out:
            out.write(f"\n==== {self.name} incarnation {self.incarnation} ====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    async def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM (once: a second one would cut the graceful stop short) and wait for the exit."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout_s)

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code, or None (and SIGKILL) when the process did not stop in time."""
        if self.proc is None:
            return None
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                return None
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def wait_ready(self, session: aiohttp.ClientSession, timeout_s: float) -> bool:
        """Poll /healthz until this process answers (or exits, or the deadline passes)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                return False
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as reply:
                    if reply.status == 200:
                        return True
            await asyncio.sleep(0.05)
        return False


class Stack:
    """PostgreSQL, NATS, the API processes and the projectors of one run, and the admin's token."""

    def __init__(self, options: Options, root: Path, log: Observer) -> None:
        self.o = options
        self.root = root
        self.log = log
        self.pg = EmbeddedPostgres(data_dir=root / "pg", port=free_port())
        self.nats = EmbeddedNats(data_dir=root / "nats", port=free_port())
        self.apis: list[Child] = []
        self.projectors: list[Child] = []
        self.webhook_workers: list[Child] = []
        self.webhook_key = webhooks.new_key()
        self.session: aiohttp.ClientSession | None = None
        self.admin_id = ""
        self.admin_token = ""

    @property
    def children(self) -> list[Child]:
        return [*self.apis, *self.projectors, *self.webhook_workers]

    def env(self, port: int | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LEDGER_DATABASE_URL=self.pg.url,
            LEDGER_NATS_URL=self.nats.url,
            LEDGER_HTTP_HOST="127.0.0.1",
            LEDGER_REQUEST_TIMEOUT_MS=str(self.o.server_request_timeout_ms),
            LEDGER_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            LEDGER_WEBHOOK_KEY=self.webhook_key,
            LEDGER_WEBHOOK_ALLOW_PRIVATE="1",  # the receiver is on loopback
            # Signed tree heads on, every second: the audit at the end checks each one against the
            # journal, so a head signed over an entry that a fault (a failover) lost fails the run.
            LEDGER_CHECKPOINT_INTERVAL_S=str(SIGNING_INTERVAL_S),
            LEDGER_SIGNING_KEY=str(self.root / "keys" / "signing-key.pem"),
        )
        if port is not None:
            env["LEDGER_HTTP_PORT"] = str(port)
        return env

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        await asyncio.gather(asyncio.to_thread(self.pg.start), asyncio.to_thread(self.nats.start))
        await db.migrate(self.pg.url)
        admin, self.admin_token = await principals.create_at(self.pg.url, role="admin", name="chaos")
        self.admin_id = str(admin.id)
        command = [sys.executable, "-m", "cli"]
        for index in range(self.o.api_processes):
            port = free_port()
            self.apis.append(Child(f"api-{index}", command + ["api"], self.env(port), self.root / f"api-{index}.log",
                                   url=f"http://127.0.0.1:{port}"))
        self.projectors = [Child(f"projector-{index}", command + ["projector"], self.env(), self.root / f"projector-{index}.log")
                           for index in range(self.o.projectors)]
        if self.o.webhooks:
            self.webhook_workers = [Child("webhooks-0", command + ["webhooks"], self.env(), self.root / "webhooks-0.log")]
        for child in self.children:
            child.start()
        ready = await asyncio.gather(*(api.wait_ready(self.session, PROCESS_READY_S_MAX) for api in self.apis))
        if not all(ready):
            raise RuntimeError(f"API processes not ready: {ready}; logs in {self.root}")
        self.log.say(f"stack up: postgres {self.pg.url}, nats {self.nats.url}, APIs {[a.url for a in self.apis]}")

    async def stop(self) -> None:
        """SIGTERM every process (a clean exit with code 0 is part of the check), then the servers."""
        children = self.children
        for child in children:
            child.expected_down = True
        codes = await asyncio.gather(*(c.terminate(PROCESS_STOP_S_MAX) for c in children))
        for child, code in zip(children, codes):
            if code != 0:
                self.log.violation(f"{child.name} did not stop cleanly on SIGTERM (exit {code}); log {child.log_path}")
        await asyncio.to_thread(self.nats.stop)
        await asyncio.to_thread(self.pg.stop)

    def kill_everything(self) -> None:
        for child in self.children:
            with contextlib.suppress(Exception):
                child.kill()
        for server in (self.nats, self.pg):
            with contextlib.suppress(Exception):
                server.kill()


class FaultInjector:
    """Faults drawn from `random.Random(seed)`: every kind once per shuffled deck, spaced out by
    `fault_interval_s`, each one undone (the process restarted) before the next."""

    def __init__(self, options: Options, stack: Stack, log: Observer, report: Report) -> None:
        self.o = options
        self.stack = stack
        self.log = log
        self.report = report
        self.faults: list[Fault] = []
        self.in_progress: str | None = None

    async def run(self, run_end: float) -> None:
        rng = random.Random(self.o.seed)
        deck: list[str] = []
        stop_at = run_end - self.o.quiet_s
        give_up_at = stop_at + self.o.overrun_s_max
        while True:
            gap = rng.uniform(0.5, 1.5) * self.o.fault_interval_s
            short = [k for k in self.o.fault_kinds if self.report.faults[k] < self.o.min_faults_per_kind]
            if time.monotonic() + gap >= stop_at and not short:
                return
            if time.monotonic() + gap >= give_up_at:
                self.log.say(f"NOTICE: fewer than {self.o.min_faults_per_kind} faults of {short} after overrunning"
                             f" {self.o.overrun_s_max:g} s")
                return
            await asyncio.sleep(gap)
            if not deck:
                deck = list(self.o.fault_kinds)
                rng.shuffle(deck)
            await self.inject(deck.pop(), rng)

    async def inject(self, kind: str, rng: random.Random) -> None:
        started = time.monotonic()
        self.in_progress = kind
        try:
            detail = await getattr(self, f"_fault_{kind}")(rng)
        finally:
            self.in_progress = None
        self.faults.append(Fault(kind, detail, started, time.monotonic()))
        self.report.faults[kind] += 1
        self.log.say(f"fault {kind}: {detail}; {time.monotonic() - started:.2f}s")

    async def _fault_api_kill(self, rng: random.Random) -> str:
        api = rng.choice(self.stack.apis)
        down_s = rng.uniform(0.0, 1.0)
        await self._kill_child(api, down_s)
        if not await api.wait_ready(self.stack.session, PROCESS_READY_S_MAX):
            self.log.violation(f"{api.name} did not come back within {PROCESS_READY_S_MAX:g} s; log {api.log_path}")
        api.expected_down = False
        return f"SIGKILL {api.name}, down {down_s:.2f}s"

    async def _fault_projector_kill(self, rng: random.Random) -> str:
        projector = rng.choice(self.stack.projectors)
        down_s = rng.uniform(0.0, 1.0)
        await self._kill_child(projector, down_s)
        projector.expected_down = False
        return f"SIGKILL {projector.name}, down {down_s:.2f}s"

    async def _fault_webhooks_kill(self, rng: random.Random) -> str:
        if not self.stack.webhook_workers:
            return "no webhook worker (webhooks off)"
        worker = rng.choice(self.stack.webhook_workers)
        down_s = rng.uniform(0.0, 1.0)
        await self._kill_child(worker, down_s)
        worker.expected_down = False
        return f"SIGKILL {worker.name}, down {down_s:.2f}s"

    async def _kill_child(self, child: Child, down_s: float) -> None:
        child.expected_down = True
        await asyncio.to_thread(child.kill)
        await asyncio.sleep(down_s)
        child.start()

    async def _fault_nats_restart(self, rng: random.Random) -> str:
        nats = self.stack.nats
        how = rng.choice(["kill", "stop"])
        down_s = rng.uniform(0.0, 2.0)
        await asyncio.to_thread(nats.kill if how == "kill" else nats.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(nats.start)
        return f"NATS {how}, down {down_s:.2f}s"

    async def _fault_postgres_restart(self, rng: random.Random) -> str:
        pg = self.stack.pg
        how = rng.choice(["kill", "kill", "stop"])
        down_s = rng.uniform(0.0, 1.5)
        await asyncio.to_thread(pg.kill if how == "kill" else pg.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(pg.start)
        return f"PostgreSQL {how}, down {down_s:.2f}s"


async def supervise(stack: Stack, injector: FaultInjector, log: Observer) -> None:
    """A process that dies when nobody killed it is a violation; it is restarted to go on."""
    while True:
        await asyncio.sleep(SUPERVISE_INTERVAL_S)
        for child in stack.children:
            if child.expected_down or child.alive:
                continue
            log.violation(f"{child.name} exited by itself with code {child.proc.returncode}; log {child.log_path}")
            child.expected_down = True
            child.start()
            if child.url is not None:
                await child.wait_ready(stack.session, PROCESS_READY_S_MAX)
            child.expected_down = False
        if injector.in_progress != "postgres_restart" and not stack.pg.running:
            log.violation("PostgreSQL exited by itself")
            await asyncio.to_thread(stack.pg.start)
        if injector.in_progress != "nats_restart" and not stack.nats.running:
            log.violation("NATS exited by itself")
            await asyncio.to_thread(stack.nats.start)
