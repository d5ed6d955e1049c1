"""The bank test under faults, Jepsen style: `ledger chaos --duration 300 --seed N`.

A world of client wallets and vendors, funded once from a system account, is driven by many
concurrent clients paying each other and the vendors through several `ledger api` processes,
while a fault injector SIGKILLs API processes and the projector and restarts NATS and
PostgreSQL. Every client retries its own idempotency key, with the same body, until it gets a
definitive answer (201 or 4xx). Afterwards the harness stops injecting, lets every pending key
settle, and checks the ledger's promises against the database itself:

- every acknowledged transfer is in the journal exactly once, as acknowledged (nothing lost);
- no key produced two entries, and no entry exists that no client was acknowledged for;
- no wallet or vendor balance is negative; balances per currency sum to zero and equal funding;
- the balances, recomputed from the postings and from the acknowledgements, equal the write model;
- the projection and the outbox converge to the journal within `converge_s` of the last fault;
- `ledger audit` passes (when it exists); every process stops cleanly on SIGTERM.

The fault schedule comes from `random.Random(seed)`, and the seed is printed, so a failing
schedule can be replayed (the interleaving with the clients cannot: timing is not seeded).
Every loop has a deadline. Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import psycopg

from ledger import db, principals
from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port

REPO = Path(__file__).resolve().parent.parent
CURRENCY = "USD"
OTHER_CURRENCY = "EUR"
FAULT_KINDS = ("api_kill", "projector_kill", "nats_restart", "postgres_restart")
EXPECTED_REJECTIONS = frozenset({"insufficient_funds", "same_account", "account_not_found", "currency_mismatch"})
# Answers that say "not now, try again": the key is retried, with the same body.
RETRIED_STATUSES = frozenset({429, 503})

PROCESS_READY_S_MAX = 30.0
PROCESS_STOP_S_MAX = 20.0
SUPERVISE_INTERVAL_S = 0.25
SCRAPE_INTERVAL_S = 2.0
CONVERGE_POLL_S = 0.1
BACKOFF_S_MIN = 0.02
BACKOFF_S_MAX = 1.0
SMALL_AMOUNT_MAX = 1000
# Kinds of payment a client makes, by share of all payments (the rest go to other wallets).
SHARE_SAME_ACCOUNT = 0.02
SHARE_UNKNOWN_TARGET = 0.02
SHARE_OTHER_CURRENCY = 0.01
SHARE_VENDOR = 0.30
SHARE_LARGE = 0.15  # of wallet-to-wallet payments: up to twice the funding, often unaffordable
# After an acknowledged payment, how often the client reads its write back: its wallet from the
# write side (never stale), or the vendor's verification from the projection (read-your-writes).
SHARE_READ_BACK = 0.05
# How often a client sends the same request twice at once (an impatient retry, a double click).
SHARE_TWIN = 0.03
# The admin pays the vendors' takings back to the wallets at this pace, or in a long run the
# money ends up with the vendors and almost every payment is refused for insufficient funds.
REFUND_INTERVAL_S = 0.2
READ_BACK_WAIT_MS = 2000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    duration_s: float = 300.0
    seed: int = 0
    api_processes: int = 2
    wallets: int = 20
    vendors: int = 3
    workers: int = 32
    faults: bool = True
    # Mean gap between one fault's end and the next one's start (uniform in 0.5x..1.5x).
    fault_interval_s: float = 1.5
    # No fault starts in the last `quiet_s` of the run, so recovery is seen under traffic.
    quiet_s: float = 5.0
    # Faults go on past `duration_s - quiet_s` (and traffic past `duration_s`) until every kind was
    # injected this often, for at most `overrun_s_max` more seconds.
    min_faults_per_kind: int = 1
    overrun_s_max: float = 120.0
    # After the run, how long pending keys may keep retrying before they count as unresolved.
    drain_s: float = 60.0
    converge_s: float = 10.0
    funding_per_wallet: int = 1_000_000
    server_request_timeout_ms: int = 5_000
    client_timeout_s: float = 15.0
    data_dir: Path | None = None
    keep_data: bool = False
    echo: bool = True

    def __post_init__(self) -> None:
        assert self.duration_s > 0 and self.api_processes >= 1 and self.wallets >= 2 and self.vendors >= 1
        assert self.workers >= 1 and self.fault_interval_s > 0 and self.drain_s > 0
        assert self.client_timeout_s * 1000 > self.server_request_timeout_ms, "the server must answer first"


@dataclasses.dataclass
class KeyResult:
    """One idempotency key: every attempt made with it, and the answer it ended with."""

    principal_id: str
    key: str
    body: dict
    purpose: str  # "funding", "payment" or "refund"
    status: int | None = None  # the definitive status; None while (or if it stayed) unresolved
    code: str | None = None
    transfer_id: str | None = None
    position: int = 0
    answered_at: float = 0.0
    attempts: int = 0
    copies: int = 1
    failures: set = dataclasses.field(default_factory=set)  # how the retried attempts ended
    ids_seen: set = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class Fault:
    kind: str
    detail: str
    started: float
    ended: float


@dataclasses.dataclass
class Report:
    seed: int
    options: Options
    keys: int = 0
    requests: int = 0
    acknowledged: int = 0
    replayed: int = 0
    # Replayed 201s of keys sent once, by how their earlier attempts ended: one of them had
    # committed, but its answer was lost. Where that is only "503 unavailable", a 503 that said
    # "the transfer was not committed" (as the 503 once said) was wrong.
    replayed_after: Counter = dataclasses.field(default_factory=Counter)
    acknowledged_after_first_fault: int = 0
    acknowledged_after_last: dict = dataclasses.field(default_factory=dict)
    rejected: Counter = dataclasses.field(default_factory=Counter)
    retried: Counter = dataclasses.field(default_factory=Counter)
    faults: Counter = dataclasses.field(default_factory=Counter)
    fault_seconds: dict = dataclasses.field(default_factory=dict)
    # Per fault kind, (mean, max) seconds from a fault's end to the first acknowledgement after it.
    recovery_seconds: dict = dataclasses.field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    phantom: int = 0
    unresolved: int = 0
    negative: int = 0
    read_backs: Counter = dataclasses.field(default_factory=Counter)
    conservation: str = "not checked"
    converged_s: float | None = None
    converged_after_last_fault_s: float | None = None
    audit: str = "not run"
    serialization_retries: int = 0
    batches: int = 0
    batches_failed_serialization: int = 0
    batches_failed_other: int = 0
    run_s: float = 0.0
    drain_s: float = 0.0
    wall_s: float = 0.0
    violations: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        o = self.options
        faults = ", ".join(f"{k}={self.faults[k]}" for k in FAULT_KINDS)
        timing = ", ".join(
            f"{k} {self.fault_seconds[k]:.2f}s" for k in FAULT_KINDS if k in self.fault_seconds
        )
        recovery = ", ".join(
            f"{k} mean {self.recovery_seconds[k][0]:.2f}s max {self.recovery_seconds[k][1]:.2f}s"
            for k in FAULT_KINDS if k in self.recovery_seconds
        )
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "none"
        retried = ", ".join(f"{k}={v}" for k, v in sorted(self.retried.items())) or "none"
        after = ", ".join(f"{k}={self.acknowledged_after_last.get(k, 0)}" for k in FAULT_KINDS)
        failed_rate = self.batches_failed_serialization / self.batches if self.batches else 0.0
        retry_rate = self.serialization_retries / self.batches if self.batches else 0.0
        converged = "no" if self.converged_s is None else f"{self.converged_s:.2f} s"
        since_fault = "" if self.converged_after_last_fault_s is None or not sum(self.faults.values()) else (
            f" after the last write ({self.converged_after_last_fault_s:.2f} s after the last fault)"
        )
        return [
            f"seed {self.seed}; duration {o.duration_s:g} s; {o.api_processes} API processes; {o.wallets} wallets;"
            f" {o.vendors} vendors; {o.workers} workers; fault interval {o.fault_interval_s:g} s",
            f"transfers attempted: {self.keys} keys, {self.requests} requests",
            f"acknowledged: {self.acknowledged} (replayed answers {self.replayed}; after the first fault"
            f" {self.acknowledged_after_first_fault}; after the last fault of each kind: {after})",
            "committed although the answer was lost (a replay of a key sent once), after: "
            + (", ".join(f"{k}={v}" for k, v in sorted(self.replayed_after.items())) or "none"),
            f"rejected by code: {rejected}",
            f"retried answers: {retried}",
            "read-backs: " + (", ".join(f"{k}={v}" for k, v in sorted(self.read_backs.items())) or "none"),
            f"faults injected: {faults} (mean duration: {timing or 'n/a'})",
            f"first acknowledgement after a fault ended: {recovery or 'n/a'}",
            f"lost {self.lost}, duplicated {self.duplicated}, phantom {self.phantom}, unresolved {self.unresolved},"
            f" negative {self.negative}",
            f"conservation {self.conservation}",
            f"projection converged in {converged}{since_fault}",
            f"audit: {self.audit}",
            f"committer: {self.batches} batches, {self.serialization_retries} serialization retries"
            f" ({retry_rate:.3f} per batch), {self.batches_failed_serialization} batches failed after all"
            f" retries ({failed_rate:.4%}), {self.batches_failed_other} batches failed otherwise (database down)",
            f"run {self.run_s:.1f} s, drain {self.drain_s:.1f} s, wall clock {self.wall_s:.1f} s",
            "violations: " + ("none" if self.ok else f"{len(self.violations)}"),
            *[f"  - {v}" for v in self.violations[:50]],
            "RESULT: " + ("ok" if self.ok else "FAILED"),
        ]


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


class Chaos:
    def __init__(self, options: Options, root: Path) -> None:
        self.o = options
        self.root = root
        self.report = Report(seed=options.seed, options=options)
        self.started = time.monotonic()
        self.pg = EmbeddedPostgres(data_dir=root / "pg", port=free_port())
        self.nats = EmbeddedNats(data_dir=root / "nats", port=free_port())
        self.apis: list[Child] = []
        self.projector: Child | None = None
        self.session: aiohttp.ClientSession | None = None
        self.results: list[KeyResult] = []
        self.faults: list[Fault] = []
        self.fault_in_progress: str | None = None
        self.run_end = 0.0
        self.traffic_stopped = asyncio.Event()
        self.writes_end = 0.0
        self.final_deadline = 0.0
        self.admin_id = ""
        self.admin_token = ""
        self.clients: list[tuple[str, str, str]] = []  # (principal id, token, wallet id)
        self.vendor_accounts: list[str] = []
        self.other_currency_vendor = ""
        self.funding_account = ""
        self.metrics_seen: dict[tuple[int, int], tuple[float, float]] = {}

    # ---- output ------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if self.o.echo:
            print(f"[{time.monotonic() - self.started:7.2f}s] {message}", flush=True)

    def violation(self, message: str) -> None:
        self.report.violations.append(message)
        self.say(f"VIOLATION: {message}")

    # ---- the stack ---------------------------------------------------------------------

    def _env(self, port: int | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LEDGER_DATABASE_URL=self.pg.url,
            LEDGER_NATS_URL=self.nats.url,
            LEDGER_HTTP_HOST="127.0.0.1",
            LEDGER_REQUEST_TIMEOUT_MS=str(self.o.server_request_timeout_ms),
            LEDGER_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        if port is not None:
            env["LEDGER_HTTP_PORT"] = str(port)
        return env

    async def start_stack(self) -> None:
        await asyncio.gather(asyncio.to_thread(self.pg.start), asyncio.to_thread(self.nats.start))
        await db.migrate(self.pg.url)
        admin, self.admin_token = await principals.create_at(self.pg.url, role="admin", name="chaos")
        self.admin_id = str(admin.id)
        command = [sys.executable, "-m", "ledger.cli"]
        for index in range(self.o.api_processes):
            port = free_port()
            self.apis.append(Child(f"api-{index}", command + ["api"], self._env(port), self.root / f"api-{index}.log",
                                   url=f"http://127.0.0.1:{port}"))
        self.projector = Child("projector", command + ["projector"], self._env(), self.root / "projector.log")
        for child in [*self.apis, self.projector]:
            child.start()
        ready = await asyncio.gather(*(api.wait_ready(self.session, PROCESS_READY_S_MAX) for api in self.apis))
        if not all(ready):
            raise RuntimeError(f"API processes not ready: {ready}; logs in {self.root}")
        self.say(f"stack up: postgres {self.pg.url}, nats {self.nats.url}, APIs {[a.url for a in self.apis]}")

    async def stop_stack(self) -> None:
        """SIGTERM every process (a clean exit with code 0 is part of the check), then the servers."""
        children = [c for c in [*self.apis, self.projector] if c is not None]
        for child in children:
            child.expected_down = True
        codes = await asyncio.gather(*(c.terminate(PROCESS_STOP_S_MAX) for c in children))
        for child, code in zip(children, codes):
            if code != 0:
                self.violation(f"{child.name} did not stop cleanly on SIGTERM (exit {code}); log {child.log_path}")
        await asyncio.to_thread(self.nats.stop)
        await asyncio.to_thread(self.pg.stop)

    def kill_everything(self) -> None:
        for child in [*self.apis, self.projector]:
            if child is not None:
                with contextlib.suppress(Exception):
                    child.kill()
        for server in (self.nats, self.pg):
            with contextlib.suppress(Exception):
                server.kill()

    # ---- the world ---------------------------------------------------------------------

    async def _admin_post(self, path: str, body: dict) -> dict:
        async with self.session.post(self.apis[0].url + path, json=body,
                                     headers={"Authorization": f"Bearer {self.admin_token}"}) as reply:
            payload = await reply.json(content_type=None)
            if reply.status != 201:
                raise RuntimeError(f"setup {path} answered {reply.status}: {payload}")
            return payload

    async def build_world(self) -> None:
        self.funding_account = (await self._admin_post("/v1/accounts", {"kind": "system", "currency": CURRENCY,
                                                                         "name": "funding"}))["id"]
        for index in range(self.o.wallets):
            client = await self._admin_post("/v1/principals", {"role": "client", "name": f"client {index}"})
            wallet = await self._admin_post("/v1/accounts", {"kind": "wallet", "currency": CURRENCY,
                                                              "owner_id": client["id"], "name": f"wallet {index}"})
            self.clients.append((client["id"], client["token"], wallet["id"]))
        vendor_owner = None
        for index in range(self.o.vendors):
            vendor = await self._admin_post("/v1/principals", {"role": "vendor", "name": f"vendor {index}"})
            vendor_owner = vendor_owner or vendor["id"]
            account = await self._admin_post("/v1/accounts", {"kind": "vendor", "currency": CURRENCY,
                                                               "owner_id": vendor["id"], "name": f"vendor {index}"})
            self.vendor_accounts.append(account["id"])
        self.other_currency_vendor = (await self._admin_post(
            "/v1/accounts", {"kind": "vendor", "currency": OTHER_CURRENCY, "owner_id": vendor_owner, "name": "eur"}
        ))["id"]
        rng = random.Random(f"{self.o.seed}/funding")
        self.final_deadline = time.monotonic() + PROCESS_READY_S_MAX
        for index, (_, _, wallet) in enumerate(self.clients):
            body = {"from_account_id": self.funding_account, "to_account_id": wallet,
                    "amount": self.o.funding_per_wallet, "currency": CURRENCY, "reference": f"funding-{index}"}
            result = await self.settle(rng, self.admin_id, self.admin_token, f"funding-{index}", body, "funding")
            if result.status != 201:
                raise RuntimeError(f"funding wallet {index} answered {result.status} {result.code}")
        self.say(f"world: {len(self.clients)} funded wallets, {len(self.vendor_accounts)} vendors (+1 in"
                 f" {OTHER_CURRENCY}), funding {self.o.funding_per_wallet} each")

    def payment(self, rng: random.Random, client: tuple[str, str, str]) -> dict:
        wallet = client[2]
        currency = CURRENCY
        draw = rng.random()
        large = False
        if draw < SHARE_SAME_ACCOUNT:
            target = wallet
        elif draw < SHARE_SAME_ACCOUNT + SHARE_UNKNOWN_TARGET:
            target = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif draw < SHARE_SAME_ACCOUNT + SHARE_UNKNOWN_TARGET + SHARE_OTHER_CURRENCY:
            target = self.other_currency_vendor
        elif draw < SHARE_SAME_ACCOUNT + SHARE_UNKNOWN_TARGET + SHARE_OTHER_CURRENCY + SHARE_VENDOR:
            target = rng.choice(self.vendor_accounts)
        else:
            target = rng.choice([c[2] for c in self.clients if c[2] != wallet])
            large = rng.random() < SHARE_LARGE
        amount = rng.randint(1, 2 * self.o.funding_per_wallet) if large else rng.randint(1, SMALL_AMOUNT_MAX)
        return {"from_account_id": wallet, "to_account_id": target, "amount": amount, "currency": currency}

    # ---- clients -----------------------------------------------------------------------

    async def settle(self, rng: random.Random, principal_id: str, token: str, key: str, body: dict,
                     purpose: str, *, copies: int = 1) -> KeyResult:
        """Send one key until it gets a definitive answer (201 or 4xx), or the drain deadline.

        With `copies` > 1 the same request is sent that many times concurrently, as an impatient
        client does: every 201 must carry the same transfer, and a 201 of any copy is the key's
        answer (a 4xx does not use up a key, so a copy decided earlier may have been refused)."""
        body = {**body, "reference": body.get("reference", key)}
        result = KeyResult(principal_id, key, body, purpose, copies=copies)
        self.results.append(result)
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
        rngs = [rng] + [random.Random(rng.random()) for _ in range(copies - 1)]
        await asyncio.gather(*(self._send(r, result, headers) for r in rngs))
        return result

    async def _send(self, rng: random.Random, result: KeyResult, headers: dict) -> None:
        key, body = result.key, result.body
        index = rng.randrange(len(self.apis))
        attempt = 0
        while True:
            remaining = self.final_deadline - time.monotonic()
            if remaining <= 0:
                return
            api = self.apis[index]
            attempt += 1
            result.attempts += 1
            self.report.requests += 1
            timeout_s = min(self.o.client_timeout_s, remaining)
            sent = time.monotonic()
            try:
                async with self.session.post(api.url + "/v1/transfers", json=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as reply:
                    status, raw, replayed = reply.status, await reply.read(), reply.headers.get("Idempotency-Replayed")
            except (asyncio.TimeoutError, TimeoutError):
                result.failures.add("client timeout")
                if timeout_s >= self.o.client_timeout_s:
                    self.report.retried["client_timeout"] += 1
                    self.violation(f"{api.name} did not answer {key} within {timeout_s:g} s (hang)")
                index = (index + 1) % len(self.apis)
                await self._backoff(rng, attempt)
                continue
            except aiohttp.ClientError:
                result.failures.add("connection error")
                self.report.retried["connection_error"] += 1
                index = (index + 1) % len(self.apis)
                await self._backoff(rng, attempt)
                continue
            answer = self._decode(raw)
            code = answer.get("code") if isinstance(answer, dict) else None
            if status == 201:
                self._acknowledged(result, answer, replayed == "true", api.name)
                return
            if 400 <= status < 500 and status not in RETRIED_STATUSES:
                if result.status is None:
                    result.status, result.code, result.answered_at = status, code, time.monotonic()
                self.report.rejected[f"{status} {code}"] += 1
                if code not in EXPECTED_REJECTIONS:
                    self.violation(f"{key} answered {status} {code}: {answer}")
                return
            result.failures.add(f"{status} {code}")
            if status in RETRIED_STATUSES:
                self.report.retried[f"{status} {self._reason(code, answer)}"] += 1
            else:
                self.report.retried[f"{status} {code}"] += 1
                self.violation(f"{api.name} answered {key} with {status} after {time.monotonic() - sent:.2f}s: "
                               f"{raw[:300]!r}")
            if rng.random() < 0.5:
                index = (index + 1) % len(self.apis)
            await self._backoff(rng, attempt)

    @staticmethod
    def _decode(raw: bytes):
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    @staticmethod
    def _reason(code: str | None, answer) -> str:
        detail = answer.get("detail", "") if isinstance(answer, dict) else ""
        if code == "unavailable" and "serializ" in detail:
            return "unavailable (serialization, retries exhausted)"
        if code == "unavailable":
            return "unavailable (database)"
        return str(code)

    def _acknowledged(self, result: KeyResult, answer: dict, replayed: bool, api_name: str) -> None:
        body = result.body
        result.status, result.answered_at = 201, time.monotonic()
        result.transfer_id = answer.get("id") if isinstance(answer, dict) else None
        result.position = answer.get("position", 0) if isinstance(answer, dict) else 0
        result.ids_seen.add(result.transfer_id)
        self.report.replayed += replayed
        if replayed and result.copies == 1:
            self.report.replayed_after[" + ".join(sorted(result.failures)) or "nothing (a fresh key replayed)"] += 1
        shape = {k: answer.get(k) for k in ("from_account_id", "to_account_id", "amount", "currency", "reference")} \
            if isinstance(answer, dict) else {}
        wanted = {k: body[k] for k in shape}
        if shape != wanted or answer.get("status") != "committed":
            self.violation(f"{api_name} acknowledged {result.key} with a different transfer: {answer} for {body}")

    async def _backoff(self, rng: random.Random, attempt: int) -> None:
        delay = min(BACKOFF_S_MAX, BACKOFF_S_MIN * 2 ** min(attempt, 10)) * rng.uniform(0.5, 1.0)
        await asyncio.sleep(max(0.0, min(delay, self.final_deadline - time.monotonic())))

    async def worker(self, index: int) -> None:
        rng = random.Random(f"{self.o.seed}/worker/{index}")
        number = 0
        while not self.traffic_stopped.is_set():
            client = rng.choice(self.clients)
            copies = 2 if rng.random() < SHARE_TWIN else 1
            result = await self.settle(rng, client[0], client[1], f"chaos-{index}-{number}",
                                       self.payment(rng, client), "payment", copies=copies)
            number += 1
            if result.status == 201 and rng.random() < SHARE_READ_BACK:
                await self.read_back(rng, client, result)

    async def treasurer(self) -> None:
        """Refund each vendor's whole balance to a random wallet, one vendor at a time. A vendor
        only ever receives between the read and the refund, so the refund is always affordable."""
        rng = random.Random(f"{self.o.seed}/treasurer")
        number = 0
        while not self.traffic_stopped.is_set():
            await asyncio.sleep(REFUND_INTERVAL_S)
            vendor = self.vendor_accounts[number % len(self.vendor_accounts)]
            balance = await self._balance(vendor)
            if balance:
                body = {"from_account_id": vendor, "to_account_id": rng.choice(self.clients)[2], "amount": balance,
                        "currency": CURRENCY}
                result = await self.settle(rng, self.admin_id, self.admin_token, f"refund-{number}", body, "refund")
                if result.status is not None and result.status != 201:
                    self.violation(f"refund of {balance} from vendor {vendor} answered {result.status} {result.code}")
            number += 1

    async def _balance(self, account_id: str) -> int | None:
        """The committed balance, or None while no API process can tell (a fault is going on)."""
        api = self.apis[0] if self.apis[0].alive else self.apis[-1]
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with self.session.get(api.url + f"/v1/accounts/{account_id}",
                                        headers={"Authorization": f"Bearer {self.admin_token}"},
                                        timeout=aiohttp.ClientTimeout(total=self.o.client_timeout_s)) as reply:
                answer = self._decode(await reply.read())
                if reply.status == 200:
                    return answer["balance"]
                if reply.status != 503:
                    self.violation(f"{api.name} answered GET account {account_id} with {reply.status}: {answer}")
        return None

    async def read_back(self, rng: random.Random, client: tuple[str, str, str], result: KeyResult) -> None:
        """Read an acknowledged payment back until a definitive answer (bounded by the drain):
        a payment to a vendor from the projection, waiting for its position; any other from the
        payer's wallet on the write side, which must already include it."""
        target = result.body["to_account_id"]
        if target in self.vendor_accounts:
            kind, token = "verification", self.admin_token
            path = (f"/v1/vendors/{target}/transfers/{result.transfer_id}/verification"
                    f"?min_position={result.position}&wait_ms={READ_BACK_WAIT_MS}")
        else:
            kind, token = "account", client[1]
            path = f"/v1/accounts/{client[2]}"
        index = rng.randrange(len(self.apis))
        attempt = 0
        while time.monotonic() < self.final_deadline:
            attempt += 1
            api = self.apis[index]
            try:
                async with self.session.get(api.url + path, headers={"Authorization": f"Bearer {token}"},
                                            timeout=aiohttp.ClientTimeout(total=self.o.client_timeout_s)) as reply:
                    status, answer = reply.status, self._decode(await reply.read())
            except (aiohttp.ClientError, asyncio.TimeoutError):
                index = (index + 1) % len(self.apis)
                await self._backoff(rng, attempt)
                continue
            code = answer.get("code") if isinstance(answer, dict) else None
            if status == 200:
                self._check_read_back(kind, result, answer, api.name)
                return
            if status == 503:
                self.report.read_backs[f"{kind} retried 503 {code}"] += 1
                index = (index + 1) % len(self.apis)
                await self._backoff(rng, attempt)
                continue
            self.report.read_backs[f"{kind} {status} {code}"] += 1
            self.violation(f"{api.name} answered the read-back of {result.key} ({kind}) with {status}: {answer}")
            return
        self.report.read_backs[f"{kind} unresolved"] += 1
        self.violation(f"read-back of {result.key} ({kind}) got no answer before the drain deadline")

    def _check_read_back(self, kind: str, result: KeyResult, answer: dict, api_name: str) -> None:
        self.report.read_backs[f"{kind} ok"] += 1
        if kind == "verification":
            fine = answer.get("transfer_id") == result.transfer_id and answer.get("amount") == result.body["amount"]
        else:
            fine = answer.get("position", 0) >= result.position and answer.get("balance", -1) >= 0
        if not fine:
            self.violation(f"{api_name}: read-back of {result.key} ({kind}) is stale or wrong: {answer}")

    # ---- faults ------------------------------------------------------------------------

    async def inject_faults(self) -> None:
        rng = random.Random(self.o.seed)
        deck: list[str] = []
        stop_at = self.run_end - self.o.quiet_s
        give_up_at = stop_at + self.o.overrun_s_max
        while True:
            gap = rng.uniform(0.5, 1.5) * self.o.fault_interval_s
            short = [k for k in FAULT_KINDS if self.report.faults[k] < self.o.min_faults_per_kind]
            if time.monotonic() + gap >= stop_at and not short:
                return
            if time.monotonic() + gap >= give_up_at:
                self.say(f"NOTICE: fewer than {self.o.min_faults_per_kind} faults of {short} after overrunning"
                         f" {self.o.overrun_s_max:g} s")
                return
            await asyncio.sleep(gap)
            if not deck:
                deck = list(FAULT_KINDS)
                rng.shuffle(deck)
            kind = deck.pop()
            started = time.monotonic()
            self.fault_in_progress = kind
            try:
                detail = await getattr(self, f"_fault_{kind}")(rng)
            finally:
                self.fault_in_progress = None
            self.faults.append(Fault(kind, detail, started, time.monotonic()))
            self.report.faults[kind] += 1
            self.say(f"fault {kind}: {detail}; {time.monotonic() - started:.2f}s")

    async def _fault_api_kill(self, rng: random.Random) -> str:
        api = rng.choice(self.apis)
        down_s = rng.uniform(0.0, 1.0)
        await self._kill_child(api, down_s)
        if not await api.wait_ready(self.session, PROCESS_READY_S_MAX):
            self.violation(f"{api.name} did not come back within {PROCESS_READY_S_MAX:g} s; log {api.log_path}")
        api.expected_down = False
        return f"SIGKILL {api.name}, down {down_s:.2f}s"

    async def _fault_projector_kill(self, rng: random.Random) -> str:
        down_s = rng.uniform(0.0, 1.0)
        await self._kill_child(self.projector, down_s)
        self.projector.expected_down = False
        return f"SIGKILL projector, down {down_s:.2f}s"

    async def _kill_child(self, child: Child, down_s: float) -> None:
        child.expected_down = True
        await asyncio.to_thread(child.kill)
        await asyncio.sleep(down_s)
        child.start()

    async def _fault_nats_restart(self, rng: random.Random) -> str:
        how = rng.choice(["kill", "stop"])
        down_s = rng.uniform(0.0, 2.0)
        await asyncio.to_thread(self.nats.kill if how == "kill" else self.nats.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.nats.start)
        return f"NATS {how}, down {down_s:.2f}s"

    async def _fault_postgres_restart(self, rng: random.Random) -> str:
        how = rng.choice(["kill", "kill", "stop"])
        down_s = rng.uniform(0.0, 1.5)
        await asyncio.to_thread(self.pg.kill if how == "kill" else self.pg.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.pg.start)
        return f"PostgreSQL {how}, down {down_s:.2f}s"

    # ---- watchers ----------------------------------------------------------------------

    async def supervise(self) -> None:
        """A process that dies when nobody killed it is a violation; it is restarted to go on."""
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
            for child in [*self.apis, self.projector]:
                if child.expected_down or child.alive:
                    continue
                self.violation(f"{child.name} exited by itself with code {child.proc.returncode};"
                               f" log {child.log_path}")
                child.expected_down = True
                child.start()
                if child.url is not None:
                    await child.wait_ready(self.session, PROCESS_READY_S_MAX)
                child.expected_down = False
            if self.fault_in_progress != "postgres_restart" and not self.pg.running:
                self.violation("PostgreSQL exited by itself")
                await asyncio.to_thread(self.pg.start)
            if self.fault_in_progress != "nats_restart" and not self.nats.running:
                self.violation("NATS exited by itself")
                await asyncio.to_thread(self.nats.start)

    async def scrape(self) -> None:
        while True:
            await self.scrape_once()
            await asyncio.sleep(SCRAPE_INTERVAL_S)

    async def scrape_once(self) -> None:
        """Counters live as long as a process: keep the last value seen of each incarnation."""
        for index, api in enumerate(self.apis):
            if not api.alive or api.expected_down:
                continue
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.session.get(api.url + "/metrics", timeout=aiohttp.ClientTimeout(total=2)) as reply:
                    text = await reply.text()
                self.metrics_seen[(index, api.incarnation)] = (
                    metric_value(text, "ledger_commit_serialization_retries_total"),
                    metric_value(text, "ledger_commit_batch_size_count"),
                )

    # ---- the run -----------------------------------------------------------------------

    async def run(self) -> Report:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as self.session:
            await self.start_stack()
            await self.build_world()
            watchers = [asyncio.create_task(self.supervise(), name="supervise"),
                        asyncio.create_task(self.scrape(), name="scrape")]
            try:
                await self.traffic()
                await self.scrape_once()
                await self.check()
                await self.converge()
                await self.audit()
            finally:
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
            await self.stop_stack()
            self.count_batches()
        return self.report

    async def traffic(self) -> None:
        run_started = time.monotonic()
        self.run_end = run_started + self.o.duration_s
        self.final_deadline = self.run_end + self.o.overrun_s_max + self.o.quiet_s + self.o.drain_s
        self.say(f"traffic for {self.o.duration_s:g} s with {self.o.workers} workers; faults "
                 f"{'every ~' + format(self.o.fault_interval_s, 'g') + ' s, seed ' + str(self.o.seed) if self.o.faults else 'off'}")
        workers = [asyncio.create_task(self.worker(i), name=f"worker-{i}") for i in range(self.o.workers)]
        workers.append(asyncio.create_task(self.treasurer(), name="treasurer"))
        injector = asyncio.create_task(self.inject_faults()) if self.o.faults else None
        if injector is not None:
            await injector
        if self.faults:  # recovery from the last fault is seen under traffic, not only in the drain
            self.run_end = max(self.run_end, self.faults[-1].ended + self.o.quiet_s)
        await asyncio.sleep(max(0.0, self.run_end - time.monotonic()))
        self.traffic_stopped.set()
        self.run_end = time.monotonic()
        self.final_deadline = self.run_end + self.o.drain_s
        await asyncio.gather(*workers)
        self.report.run_s = self.run_end - run_started
        self.writes_end = time.monotonic()
        self.report.drain_s = max(0.0, self.writes_end - self.run_end)
        self.say(f"traffic done; drained in {self.report.drain_s:.2f}s")

    # ---- the checks --------------------------------------------------------------------

    async def check(self) -> None:
        report = self.report
        payments = [r for r in self.results if r.purpose == "payment"]
        report.keys = len(payments)
        acked = [r for r in self.results if r.status == 201]
        report.acknowledged = sum(1 for r in payments if r.status == 201)
        first_fault = self.faults[0].started if self.faults else float("inf")
        report.acknowledged_after_first_fault = sum(1 for r in payments if r.status == 201 and r.answered_at > first_fault)
        for kind in FAULT_KINDS:
            ends = [f.ended for f in self.faults if f.kind == kind]
            if ends:
                report.acknowledged_after_last[kind] = sum(
                    1 for r in payments if r.status == 201 and r.answered_at > ends[-1])
                report.fault_seconds[kind] = sum(f.ended - f.started for f in self.faults if f.kind == kind) / len(ends)
        acked_at = sorted(r.answered_at for r in payments if r.status == 201)
        for kind in FAULT_KINDS:
            waits = []
            for fault in (f for f in self.faults if f.kind == kind):
                later = bisect.bisect_right(acked_at, fault.ended)
                if later < len(acked_at):
                    waits.append(acked_at[later] - fault.ended)
            if waits:
                report.recovery_seconds[kind] = (sum(waits) / len(waits), max(waits))
        unresolved = [r for r in self.results if r.status is None]
        report.unresolved = len(unresolved)
        for r in unresolved[:10]:
            self.violation(f"key {r.key} never got a definitive answer ({r.attempts} attempts)")
        for r in self.results:
            if len(r.ids_seen) > 1:
                report.duplicated += 1
                self.violation(f"key {r.key} was acknowledged with different transfers {sorted(r.ids_seen)}")

        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as conn:
            journal = await (await conn.execute(
                "SELECT position, transfer_id::TEXT, from_account_id::TEXT, to_account_id::TEXT, amount, currency,"
                " reference FROM journal ORDER BY position")).fetchall()
            head = (await (await conn.execute("SELECT position FROM journal_head WHERE id = 1")).fetchone())[0]
            balances = await (await conn.execute(
                "SELECT b.account_id::TEXT, b.kind, a.currency, b.balance FROM balances b"
                " JOIN accounts a ON a.id = b.account_id")).fetchall()
            from_postings = dict(await (await conn.execute(
                "SELECT account_id::TEXT, sum(amount)::INT8 FROM postings GROUP BY account_id")).fetchall())
            keys = await (await conn.execute(
                "SELECT principal_id::TEXT, key, position FROM idempotency")).fetchall()
            outbox_orphans = (await (await conn.execute(
                "SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM journal j WHERE j.position = o.position)"
            )).fetchone())[0]

        positions = [row[0] for row in journal]
        if positions != list(range(1, len(positions) + 1)) or head != len(positions):
            self.violation(f"journal positions are not 1..{len(positions)} with the head there (head {head})")
        if outbox_orphans:
            self.violation(f"{outbox_orphans} outbox rows name no journal entry")

        by_id = {row[1]: row for row in journal}
        acked_ids = {}
        for r in acked:
            row = by_id.get(r.transfer_id)
            b = r.body
            if row is None:
                report.lost += 1
                self.violation(f"acknowledged transfer {r.transfer_id} (key {r.key}) is not in the journal")
            elif (row[2], row[3], row[4], row[5], row[6]) != (b["from_account_id"], b["to_account_id"], b["amount"],
                                                           b["currency"], b["reference"]):
                report.lost += 1
                self.violation(f"journal entry {row} differs from acknowledged {r.key}: {b}")
            acked_ids[r.transfer_id] = r
        per_reference = Counter(row[6] for row in journal)
        for reference, count in per_reference.items():
            if count > 1:
                report.duplicated += 1
                self.violation(f"key {reference} has {count} journal entries")
        unresolved_keys = {r.key for r in unresolved}
        for row in journal:
            if row[1] not in acked_ids:
                if row[6] in unresolved_keys:
                    continue  # counted as unresolved already
                report.phantom += 1
                if report.phantom <= 10:
                    self.violation(f"journal entry {row[0]} ({row[6]}) was never acknowledged to anyone")

        stored_keys = {(principal, key): position for principal, key, position in keys}
        for r in self.results:
            position = stored_keys.get((r.principal_id, r.key))
            if r.status == 201 and (position is None or by_id.get(r.transfer_id, (None,))[0] != position):
                self.violation(f"idempotency row of {r.key} is {position}, not the acknowledged entry")
            if r.status is not None and r.status != 201 and position is not None:
                self.violation(f"{r.key} was answered {r.status} {r.code} but its key is used up (position {position})")

        expected: dict[str, int] = defaultdict(int)
        for r in acked:
            expected[r.body["from_account_id"]] -= r.body["amount"]
            expected[r.body["to_account_id"]] += r.body["amount"]
        sums: dict[str, int] = defaultdict(int)
        funding = sum(r.body["amount"] for r in acked if r.purpose == "funding")
        held = 0
        for account_id, kind, currency, balance in balances:
            sums[currency] += balance
            if kind != "system" and balance < 0:
                report.negative += 1
                self.violation(f"{kind} account {account_id} is at {balance}")
            if kind != "system" and currency == CURRENCY:
                held += balance
            if balance != from_postings.get(account_id, 0):
                self.violation(f"balance of {account_id} is {balance}, its postings sum to "
                               f"{from_postings.get(account_id, 0)}")
            if balance != expected.get(account_id, 0):
                self.violation(f"balance of {account_id} is {balance}, the acknowledgements make it "
                               f"{expected.get(account_id, 0)}")
        conserved = all(total == 0 for total in sums.values()) and held == funding == self.o.wallets * \
            self.o.funding_per_wallet
        totals = ", ".join(f"{c} sum {t}" for c, t in sorted(sums.items()))
        report.conservation = f"{'ok' if conserved else 'VIOLATED'} ({totals}; wallets and vendors hold {held}" \
                              f" = funding {funding})"
        if not conserved:
            self.violation(f"money is not conserved: {report.conservation}")

    async def converge(self) -> None:
        """The projection (and the outbox) must reach the journal within `converge_s` of the last
        fault or of the last write, whichever is later."""
        last_fault = self.faults[-1].ended if self.faults else self.writes_end
        deadline = max(last_fault, self.writes_end) + self.o.converge_s
        state = "not polled"
        while True:
            with contextlib.suppress(psycopg.Error):
                state = await self._projection_state()
                if state == "converged":
                    now = time.monotonic()
                    self.report.converged_s = now - self.writes_end
                    self.report.converged_after_last_fault_s = now - last_fault
                    return
            if time.monotonic() > deadline:
                self.violation(f"projection or outbox not converged {self.o.converge_s:g} s after the last fault"
                               f" or write: {state}")
                return
            await asyncio.sleep(CONVERGE_POLL_S)

    async def _projection_state(self) -> str:
        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True, connect_timeout=2) as conn:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                head = (await (await conn.execute("SELECT position FROM journal_head WHERE id = 1")).fetchone())[0]
                checkpoint = await (await conn.execute(
                    "SELECT position FROM projector_checkpoint WHERE name = 'main'")).fetchone()
                outbox = (await (await conn.execute("SELECT count(*) FROM outbox")).fetchone())[0]
                differ = (await (await conn.execute(
                    "SELECT count(*) FROM balances b FULL JOIN projected_balances p ON p.account_id = b.account_id"
                    " WHERE coalesce(b.balance, 0) <> coalesce(p.balance, 0)")).fetchone())[0]
                vendor_entries = (await (await conn.execute(
                    "SELECT count(*) FROM journal j JOIN accounts a ON a.id = j.to_account_id AND a.kind = 'vendor'"
                    " WHERE NOT EXISTS (SELECT 1 FROM verifications v WHERE v.transfer_id = j.transfer_id)"
                )).fetchone())[0]
        checkpoint = checkpoint[0] if checkpoint else 0
        if checkpoint == head and differ == 0 and outbox == 0 and vendor_entries == 0:
            return "converged"
        return (f"head {head}, checkpoint {checkpoint}, {differ} projected balances differ,"
                f" {vendor_entries} vendor entries unverified, outbox {outbox}")

    async def audit(self) -> None:
        spec = importlib.util.find_spec("ledger.audit")
        if spec is None:
            self.report.audit = "SKIPPED: ledger/audit.py does not exist yet"
            self.say(f"NOTICE: audit check {self.report.audit}")
            return
        module = importlib.import_module("ledger.audit")
        run_audit = getattr(module, "run_audit", None)
        if run_audit is not None:
            try:
                outcome = run_audit(self.pg.url)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
                verdict = _audit_verdict(outcome)
            except Exception as error:  # the audit itself failing is a failed audit
                verdict, outcome = False, repr(error)
            if verdict is not None:
                self.report.audit = "ok (run_audit)" if verdict else f"FAILED (run_audit): {str(outcome)[:500]}"
                if not verdict:
                    self.violation(f"audit failed: {str(outcome)[:500]}")
                return
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledger.cli", "audit", env=self._env(), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(done.communicate(), 120)
        except asyncio.TimeoutError:
            done.kill()
            output = b"(timed out after 120 s)"
        if done.returncode == 0:
            self.report.audit = "ok (ledger audit exited 0)"
        else:
            self.report.audit = f"FAILED (ledger audit exited {done.returncode})"
            self.violation(f"ledger audit exited {done.returncode}: {output.decode(errors='replace')[-1000:]}")

    def count_batches(self) -> None:
        report = self.report
        report.serialization_retries = int(sum(v[0] for v in self.metrics_seen.values()))
        report.batches = int(sum(v[1] for v in self.metrics_seen.values()))
        failed = re.compile(r"batch of \d+ failed: (.*)")
        for api in self.apis:
            with contextlib.suppress(OSError):
                for line in api.log_path.read_text(errors="replace").splitlines():
                    match = failed.search(line)
                    if match is None:
                        continue
                    if "serializ" in match.group(1):
                        report.batches_failed_serialization += 1
                    else:
                        report.batches_failed_other += 1


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample (or the first labelled one) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _audit_verdict(outcome) -> bool | None:
    """Read run_audit's answer whatever its shape: a bool, something with `ok`, or a dict."""
    if isinstance(outcome, bool):
        return outcome
    if isinstance(outcome, int):
        return outcome == 0
    if isinstance(outcome, dict) and "ok" in outcome:
        return bool(outcome["ok"])
    if hasattr(outcome, "ok"):
        return bool(outcome.ok)
    return None


async def run(options: Options) -> Report:
    """Run the whole bank test and return its report (see `Report.ok` and `Report.violations`)."""
    root = Path(options.data_dir) if options.data_dir else Path(tempfile.mkdtemp(prefix="ledger-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(options, root)
    started = time.monotonic()
    try:
        report = await chaos.run()
    finally:
        chaos.kill_everything()
    report.wall_s = time.monotonic() - started
    if report.ok and not options.keep_data:
        shutil.rmtree(root, ignore_errors=True)
    else:
        chaos.say(f"data and logs kept in {root}")
    return report


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="ledger chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="fault schedule seed (default: random, printed)")
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--wallets", type=int, default=20)
    parser.add_argument("--vendors", type=int, default=3)
    parser.add_argument("--workers", type=int, default=32, help="concurrent clients")
    parser.add_argument("--fault-interval", type=float, default=1.5,
                        help="mean seconds between the end of one fault and the start of the next")
    parser.add_argument("--no-faults", action="store_true", help="traffic only (to measure contention)")
    parser.add_argument("--min-faults", type=int, default=1,
                        help="inject every kind at least this often, running longer if needed")
    parser.add_argument("--quiet", type=float, default=5.0, help="no fault starts in the run's last seconds")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds pending keys may retry after the run")
    parser.add_argument("--converge", type=float, default=10.0, help="seconds the projection may take to converge")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    return Options(
        duration_s=args.duration, seed=seed, api_processes=args.api_processes, wallets=args.wallets,
        vendors=args.vendors, workers=args.workers, faults=not args.no_faults, fault_interval_s=args.fault_interval,
        quiet_s=args.quiet, min_faults_per_kind=args.min_faults, drain_s=args.drain, converge_s=args.converge, data_dir=args.data_dir,
        keep_data=args.keep_data,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    print(f"chaos seed {options.seed} (replay the fault schedule with --seed {options.seed})", flush=True)
    report = asyncio.run(run(options))
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
