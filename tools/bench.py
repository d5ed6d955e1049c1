"""`ledger bench`: one run, one table — the ledger's transfer throughput and latency against
PostgreSQL's own TPC-B (pgbench) on the same server, in the same run.

The bench starts its own stack (embedded PostgreSQL with its durable defaults and NATS, or the
services named by `--database-url`/`--nats-url`), one API process, one projector process and one
webhook worker (`ledger webhooks`, delivering every vendor payment to a receiver on loopback in a
process of its own), creates its world through the API, and drives `POST /v1/transfers` from a separate load-generating
process (`tools.loadgen`). Phases, each `--duration` seconds after a short unrecorded warm-up:

1. pgbench TPC-B (`-c 8 -j 2 -M prepared`) into a database of its own on the same server;
2. uniform, closed loop: payments spread over every wallet and vendor, as fast as they go (the
   Merkle tree's lag behind the head is sampled meanwhile);
3. uniform, open loop at 50% of what phase 2 reached, latency measured from the due time;
4. hot vendor, closed loop: 90% of the payments go to one vendor;
5. with `--big-journal N`: the journal is grown to N entries (`tools.seed`) and phase 2 again.

After phase 4 the bench waits until every vendor payment reached the webhook receiver, and reports
the commit-to-arrival latency of the payments of phase 3. Then phase 2 four more times, with the
projector restarted without its Merkle tree follower (`LEDGER_TREE_FOLLOWER=0`), with it, with it,
without it: what the follower costs the write path, measured side by side in one run.

It prints the table (figures and the issue's targets, met or not) and writes `result.json` and
`chart.png` (throughput and latency per 1 s bucket) under `.ledger/bench/run-<timestamp>/`.
docs/bench.md explains every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import aiohttp
import msgspec
import psycopg
from psycopg import conninfo

from ledger import db, principals
from proofs import store as tree_store
from tools import loadgen
from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tools.procstat import process_stat

# The targets.
UNIFORM_VS_PGBENCH_MIN = 1.5
P99_AT_HALF_MS_MAX = 25.0
HOT_VS_UNIFORM_MIN = 0.8
LAG_P99_AT_HALF_MS_MAX = 250.0
BIG_VS_EMPTY_MIN = 0.8
RSS_MB_MAX = 200.0
WEBHOOK_DRAIN_S_MAX = 60.0
WEBHOOK_P99_AT_HALF_MS_MAX = 500.0  # issue 14  # after the last phase, every vendor payment reaches the receiver by then
TREE_COST_MAX = 0.05  # issue 15: throughput with the Merkle tree follower within 5% of without
TREE_LAG_SAMPLE_S = 0.1
AUDIT_ENTRIES_PER_S_MIN = 100_000
# The projector keeps up when its watermark reaches the journal head this soon after load stops,
# and its lag in the last third of a phase is at most this factor (plus slack) of the first third's.
CATCH_UP_S_MAX = 10.0
LAG_GROWTH_FACTOR_MAX = 2.0
LAG_GROWTH_SLACK_S = 0.020

CURRENCY = "USD"
FUNDING_PER_WALLET = 10**12  # minor units; a run spends at most loadgen.AMOUNT_MAX per transfer
SETUP_CONCURRENCY = 16  # requests in flight while the world is created
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
SAMPLE_INTERVAL_S = 0.25
NOISE_CORES_WARN = 0.5  # other tenants' CPU during a phase above which the table carries a warning
BUCKET_S = 1.0
SEED_CATCH_UP_TIMEOUT_S = 1800.0  # the projector replaying a seeded journal of a million entries
BENCH_RATE_PER_S = 1_000_000  # LEDGER_RATE_PER_S for the bench's API unless the caller sets it
PGBENCH_DATABASE = "ledger_pgbench"
PGBENCH_SCALE = 10
PGBENCH_CLIENTS = 8
PGBENCH_THREADS = 2
HOTSPOTS_SHOWN = 15
PROFILE_RATE_HZ = 200
# Frames under every sample of the API (start-up and the event loop's entry): no information inclusive.
_ROOT_FRAMES = ("(<frozen runpy>)", "(cli/__init__.py)", "(tools/bench.py)", "(asyncio/runners.py)")
_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)


# ---- what a phase measured ------------------------------------------------------------------


@dataclass
class Lag:
    """Commit to projected, from the `verifications` rows of the phase's window (seconds)."""

    count: int = 0
    p50_s: float | None = None
    p99_s: float | None = None
    first_third_p50_s: float | None = None
    last_third_p50_s: float | None = None
    catch_up_s: float | None = None  # load stopped -> watermark at the head; None: not within the limit

    @property
    def grows(self) -> bool:
        if self.first_third_p50_s is None or self.last_third_p50_s is None:
            return False
        return self.last_third_p50_s > self.first_third_p50_s * LAG_GROWTH_FACTOR_MAX + LAG_GROWTH_SLACK_S

    @property
    def keeps_up(self) -> bool:
        return self.catch_up_s is not None and not self.grows


@dataclass
class Phase:
    name: str
    scenario: str
    mode: str
    concurrency: int
    rate_per_s: float
    duration_s: float
    sent: int = 0
    committed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # status -> count
    throughput_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95, p99, max
    lag: Lag = field(default_factory=Lag)
    cpu_cores: dict[str, float] = field(default_factory=dict)  # process group -> CPU s per s
    committer: dict[str, float] = field(default_factory=dict)  # from the API's /metrics
    series: dict[str, list[float]] = field(default_factory=dict)  # per 1 s bucket

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    assert sorted_values and 0 <= fraction <= 1
    rank = max(1, int(-(-fraction * len(sorted_values) // 1)))  # ceil without floats drifting
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(phase: Phase, records: loadgen.Records) -> None:
    """Throughput counts 201s answered inside the window; latency covers every request sent in it."""
    window = records.duration_s
    phase.sent = len(records.status)
    done = [due + latency for due, latency in zip(records.due_s, records.latency_s)]
    phase.committed = sum(1 for status, t in zip(records.status, done) if status == 201 and t <= window)
    phase.throughput_per_s = phase.committed / window
    errors: dict[str, int] = {}
    for status in records.status:
        if status != 201:
            errors[str(status)] = errors.get(str(status), 0) + 1
    phase.errors = errors
    latencies = sorted(records.latency_s)
    if latencies:
        phase.latency_ms = {name: percentile(latencies, q) * 1000
                            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))}
    phase.series = _series(records, done)


def _series(records: loadgen.Records, done: list[float]) -> dict[str, list[float]]:
    """Per 1 s bucket of completion time: committed per second, p50 and p99 latency (ms)."""
    buckets = max(1, int(records.duration_s / BUCKET_S + 0.5))
    latencies: list[list[float]] = [[] for _ in range(buckets)]
    committed = [0] * buckets
    for status, t, latency in zip(records.status, done, records.latency_s):
        index = int(t / BUCKET_S)
        if index >= buckets:
            continue
        latencies[index].append(latency)
        committed[index] += status == 201
    p50, p99 = [], []
    for bucket in latencies:
        bucket.sort()
        p50.append(percentile(bucket, 0.5) * 1000 if bucket else float("nan"))
        p99.append(percentile(bucket, 0.99) * 1000 if bucket else float("nan"))
    return {"t_s": [(i + 0.5) * BUCKET_S for i in range(buckets)], "committed_per_s": [c / BUCKET_S for c in committed],
            "p50_ms": p50, "p99_ms": p99}


# ---- the processes: CPU and memory, read from /proc -----------------------------------------


def _memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB, or zeros once the process is gone."""
    rss = hwm = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def _machine_busy_ticks() -> int:
    """CPU ticks of every core spent on anything but idle and I/O wait, since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq + steal


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Sampler:
    """A thread that reads /proc every SAMPLE_INTERVAL_S: the peak memory of the API and the
    projector, and the CPU time of each process group, so that a phase can say where the 2 cores
    went. A group is its root pids and all their descendants (PostgreSQL's backends)."""

    def __init__(self) -> None:
        self._roots: dict[str, set[int]] = {}
        self._memory_watched: dict[str, int] = {}
        self.peak_kb: dict[str, int] = {}
        self._ticks: dict[int, tuple[str, int]] = {}  # pid -> (group, cumulative ticks)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def watch(self, group: str, pid: int, *, memory: bool = False) -> None:
        with self._lock:
            self._roots.setdefault(group, set()).add(pid)
            if memory:
                self._memory_watched[group] = pid

    def unwatch(self, group: str) -> None:
        with self._lock:
            self._roots.pop(group, None)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> tuple[float, int, dict[int, tuple[str, int]]]:
        self._sample()
        with self._lock:
            return time.monotonic(), _machine_busy_ticks(), dict(self._ticks)

    def cores_since(self, before: tuple[float, int, dict[int, tuple[str, int]]]) -> dict[str, float]:
        """CPU seconds per elapsed second of each group since `before` (a process born since
        counts from zero; one that died since loses at most one sampling interval), and under
        "others" what the rest of the machine used meanwhile: on a shared machine, the noise."""
        started, busy_before, ticks_before = before
        elapsed, busy_now, ticks_now = self.snapshot()
        elapsed -= started
        used: dict[str, float] = {}
        for pid, (group, ticks) in ticks_now.items():
            delta = ticks - ticks_before.get(pid, (group, 0))[1]
            used[group] = used.get(group, 0.0) + delta / _CLOCK_TICKS_PER_S
        used["others"] = max(0.0, (busy_now - busy_before) / _CLOCK_TICKS_PER_S - sum(used.values()))
        return {group: round(seconds / elapsed, 2) for group, seconds in sorted(used.items())}

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            roots = {group: set(pids) for group, pids in self._roots.items()}
            watched = dict(self._memory_watched)
        children: dict[int, list[int]] = {}
        stats: dict[int, tuple[int, int, int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := process_stat(int(entry))) is not None:
                stats[int(entry)] = stat
                children.setdefault(stat[0], []).append(int(entry))
        with self._lock:
            # The bench itself (its sampling included) alone: its children are in their own groups.
            if (own := stats.get(os.getpid())) is not None:
                self._ticks[os.getpid()] = ("bench", own[1])
            for group, pids in roots.items():
                todo = list(pids)
                while todo:
                    pid = todo.pop()
                    if pid in stats:
                        self._ticks[pid] = (group, stats[pid][1])
                        todo.extend(children.get(pid, ()))
            for group, pid in watched.items():
                rss, hwm = _memory_kb(pid)
                self.peak_kb[group] = max(self.peak_kb.get(group, 0), rss, hwm)


# ---- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    database_url: str
    nats_url: str
    api_url: str
    run_dir: Path
    postgres: EmbeddedPostgres | None = None
    nats: EmbeddedNats | None = None
    api: subprocess.Popen | None = None
    projector: subprocess.Popen | None = None
    webhooks: subprocess.Popen | None = None
    receiver: subprocess.Popen | None = None
    webhook_key: str = ""


def _service_env(stack: Stack, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LEDGER_METRICS_PORT", None)  # a fixed port from the caller's shell would collide
    env.update(LEDGER_DATABASE_URL=stack.database_url, LEDGER_NATS_URL=stack.nats_url,
               LEDGER_HTTP_HOST="127.0.0.1", LEDGER_HTTP_PORT=str(port),
               # Webhooks on, to a receiver on loopback that the bench starts (`start_receiver`).
               LEDGER_WEBHOOK_KEY=stack.webhook_key, LEDGER_WEBHOOK_ALLOW_PRIVATE="1")
    # The per-principal rate limit (500 items/s by default) would cap the bulk path and the
    # import, which run as one client at a time; the limiter still runs on every request.
    env.setdefault("LEDGER_RATE_PER_S", str(BENCH_RATE_PER_S))
    return env


def _spawn(stack: Stack, command: str, port: int, *, cwd: Path | None = None, **env: str) -> subprocess.Popen:
    """`ledger <command>` as a service of the stack; `cwd`: a checkout to run instead of this one
    (`-m` puts the working directory first on the path)."""
    log = open(stack.run_dir / f"{command}.log", "ab")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "--log-level", "WARNING", command],
            env={**_service_env(stack, port), **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=cwd,
        )


def _stop_process(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while True:
            for name, process in (("api", stack.api), ("projector", stack.projector)):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"the {name} process exited with {process.returncode}; "
                                       f"see {stack.run_dir / (name + '.log')}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(stack.api_url + "/readyz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API was not ready within {READY_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.1)


# ---- the world -------------------------------------------------------------------------------


class _Api:
    """The few admin calls that build the world, each expected to succeed."""

    def __init__(self, http: aiohttp.ClientSession, base: str, admin: str) -> None:
        self._http, self._base, self._admin = http, base, admin
        self._limit = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def _post(self, path: str, body: dict, *, key: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self._admin}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self._limit, self._http.post(self._base + path, json=body, headers=headers) as response:
            reply = await response.json(content_type=None)
            if response.status != 201:
                raise RuntimeError(f"POST {path} answered {response.status}: {reply}")
            return reply

    async def principal(self, role: str, name: str) -> dict:
        return await self._post("/v1/principals", {"role": role, "name": name})

    async def account(self, kind: str, owner_id: str | None, name: str) -> str:
        body = {"kind": kind, "currency": CURRENCY, "name": name}
        if owner_id is not None:
            body["owner_id"] = owner_id
        return (await self._post("/v1/accounts", body))["id"]

    async def webhook(self, token: str, vendor_account: str, url: str) -> None:
        async with self._http.post(f"{self._base}/v1/vendors/{vendor_account}/webhooks", json={"url": url},
                                   headers={"Authorization": f"Bearer {token}"}) as reply:
            if reply.status != 201:
                raise RuntimeError(f"registering a webhook answered {reply.status}: {await reply.text()}")

    async def fund(self, source: str, target: str, amount: int, key: str) -> None:
        body = {"from_account_id": source, "to_account_id": target, "amount": amount, "currency": CURRENCY,
                "reference": "bench funding"}
        await self._post("/v1/transfers", body, key=key)


async def create_world(stack: Stack, *, clients: int, wallets: int, vendors: int,
                       webhook_url: str | None = None) -> loadgen.World:
    """Clients each owning wallets/clients wallets, all funded from one system account; vendors,
    each with a webhook endpoint at `webhook_url` when given (every event type)."""
    assert clients >= 1 and wallets >= clients and vendors >= 1
    _, admin = await principals.create_at(stack.database_url, role="admin", name="bench admin")
    async with aiohttp.ClientSession() as http:
        api = _Api(http, stack.api_url, admin)
        funding = await api.account("system", None, "bench funding")
        owners = await asyncio.gather(*(api.principal("client", f"bench client {i}") for i in range(clients)))
        wallet_owners = [owners[i % clients] for i in range(wallets)]
        wallet_ids = await asyncio.gather(*(api.account("wallet", o["id"], f"bench wallet {i}")
                                            for i, o in enumerate(wallet_owners)))
        await asyncio.gather(*(api.fund(funding, w, FUNDING_PER_WALLET, f"bench-funding-{w}") for w in wallet_ids))
        sellers = await asyncio.gather(*(api.principal("vendor", f"bench vendor {i}") for i in range(vendors)))
        vendor_ids = await asyncio.gather(*(api.account("vendor", s["id"], f"bench vendor {i}")
                                            for i, s in enumerate(sellers)))
        if webhook_url is not None:
            await asyncio.gather(*(api.webhook(s["token"], v, webhook_url) for s, v in zip(sellers, vendor_ids)))
    return loadgen.World(
        api_url=stack.api_url, currency=CURRENCY,
        wallets=[loadgen.Wallet(token=o["token"], account_id=w) for o, w in zip(wallet_owners, wallet_ids)],
        vendors=list(vendor_ids),
    )


# ---- database helpers ------------------------------------------------------------------------


async def _scalar(url: str, query: str, params: tuple = ()) -> Any:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute(query, params)).fetchone()
        return row[0] if row else None


async def _execute(url: str, *statements: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement)


async def journal_head(url: str) -> int:
    return await _scalar(url, "SELECT position FROM journal_head WHERE id = 1")


async def wait_projector(url: str, *, timeout_s: float) -> float | None:
    """Seconds until the projector's watermark reaches the journal head as it is now; None if not
    within `timeout_s`."""
    head = await journal_head(url)
    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            row = await (await conn.execute("SELECT coalesce(max(position), 0) FROM projector_checkpoint")).fetchone()
            if row[0] >= head:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                return None
            await asyncio.sleep(0.05)


async def measure_lag(url: str, records: loadgen.Records) -> Lag:
    """Commit to projected for the verifications committed inside the phase's window."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        rows = await (await conn.execute(
            "SELECT extract(epoch FROM v.committed_at::TIMESTAMPTZ)::FLOAT8,"
            " extract(epoch FROM v.projected_at - v.committed_at::TIMESTAMPTZ)::FLOAT8"
            " FROM verifications v WHERE v.committed_at::TIMESTAMPTZ >= to_timestamp(%s)"
            " AND v.committed_at::TIMESTAMPTZ < to_timestamp(%s)",
            (records.window_start_unix, records.window_end_unix),
        )).fetchall()
    if not rows:
        return Lag()
    lags = sorted(max(0.0, lag) for _, lag in rows)
    third = (records.window_end_unix - records.window_start_unix) / 3
    first = sorted(max(0.0, lag) for at, lag in rows if at < records.window_start_unix + third)
    last = sorted(max(0.0, lag) for at, lag in rows if at >= records.window_end_unix - third)
    return Lag(
        count=len(lags), p50_s=percentile(lags, 0.5), p99_s=percentile(lags, 0.99),
        first_third_p50_s=percentile(first, 0.5) if first else None,
        last_third_p50_s=percentile(last, 0.5) if last else None,
    )


# ---- pgbench ---------------------------------------------------------------------------------


@dataclass
class Pgbench:
    tps: float | None = None
    latency_avg_ms: float | None = None
    cpu_cores: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None


def _pgbench_binary(stack: Stack) -> Path:
    if stack.postgres is not None:
        return stack.postgres.bin("pgbench")
    found = shutil.which("pgbench")
    if found:
        return Path(found)
    # Only to find the bundled binaries: nothing is started.
    return EmbeddedPostgres(data_dir=stack.run_dir / "unused", port=0).bin("pgbench")


def _pgbench_args(url: str) -> tuple[list[str], dict[str, str]]:
    params = conninfo.conninfo_to_dict(url)
    args = []
    for option, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
        if params.get(key):
            args += [option, str(params[key])]
    env = dict(os.environ)
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    return args + [PGBENCH_DATABASE], env


async def _run_logged(command: list[str], *, env: dict[str, str], log_path: Path,
                      sampler: Sampler | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    if sampler is not None:
        sampler.watch("client", process.pid)
    output = (await process.communicate())[0].decode(errors="replace")
    log_path.write_text(output)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {process.returncode}; see {log_path}")
    return output


async def pgbench_init(stack: Stack) -> None:
    await _execute(stack.database_url, f"DROP DATABASE IF EXISTS {PGBENCH_DATABASE}",
                   f"CREATE DATABASE {PGBENCH_DATABASE}")
    args, env = _pgbench_args(stack.database_url)
    await _run_logged([str(_pgbench_binary(stack)), "-i", "-q", "-s", str(PGBENCH_SCALE), *args], env=env,
                      log_path=stack.run_dir / "pgbench-init.log")


async def pgbench_run(stack: Stack, sampler: Sampler, *, duration_s: float) -> Pgbench:
    args, env = _pgbench_args(stack.database_url)
    await _execute(stack.database_url, "CHECKPOINT")
    before = sampler.snapshot()
    output = await _run_logged(
        [str(_pgbench_binary(stack)), "-c", str(PGBENCH_CLIENTS), "-j", str(PGBENCH_THREADS), "-M", "prepared",
         "-T", str(int(duration_s)), "-n", *args],
        env=env, log_path=stack.run_dir / "pgbench.log", sampler=sampler,
    )
    cores = sampler.cores_since(before)
    sampler.unwatch("client")
    tps, latency = _TPS.search(output), _LATENCY.search(output)
    if tps is None:
        raise RuntimeError(f"no tps in pgbench's output; see {stack.run_dir / 'pgbench.log'}")
    return Pgbench(tps=float(tps.group(1)), latency_avg_ms=float(latency.group(1)) if latency else None,
                   cpu_cores=cores)


# ---- the committer's own view (the API's /metrics) -------------------------------------------

_COMMITTER_SERIES = {
    "ledger_commit_batch_size_sum": "transfers",
    "ledger_commit_batch_size_count": "batches",
    "ledger_commit_duration_seconds_sum": "commit_s",
    "ledger_commit_serialization_retries_total": "retries",
}


async def committer_counters(stack: Stack) -> dict[str, float]:
    """The API's cumulative group-commit counters; empty when /metrics does not answer."""
    counters: dict[str, float] = {}
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(stack.api_url + "/metrics") as response:
                text = await response.text()
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in _COMMITTER_SERIES:
                counters[_COMMITTER_SERIES[name]] = float(value)
    return counters


def committer_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Batches, mean batch size, mean batch transaction time and 40001 retries over a phase."""
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in _COMMITTER_SERIES.values()}
    if not delta["batches"]:
        return {}
    return {"batches": int(delta["batches"]), "batch_mean": round(delta["transfers"] / delta["batches"], 1),
            "commit_ms_mean": round(1000 * delta["commit_s"] / delta["batches"], 2),
            "retries": int(delta["retries"])}


# ---- one load phase --------------------------------------------------------------------------


@dataclass
class Options:
    duration_s: float
    warmup_s: float
    concurrency: int
    run_id: str
    world_path: Path


async def run_phase(stack: Stack, sampler: Sampler, options: Options, *, name: str, scenario: str,
                    rate_per_s: float = 0.0, profile: dict[str, Path] | None = None, native: bool = False) -> Phase:
    """One loadgen process for one phase; the CPU of every process is counted over its run."""
    out = stack.run_dir / f"loadgen-{name}.json"
    phase = Phase(name=name, scenario=scenario, mode="open" if rate_per_s else "closed",
                  concurrency=options.concurrency, rate_per_s=round(rate_per_s, 1), duration_s=options.duration_s)
    await _execute(stack.database_url, "CHECKPOINT")
    command = [sys.executable, "-m", "tools.loadgen", "--world", str(options.world_path), "--out", str(out),
               "--scenario", scenario, "--concurrency", str(options.concurrency), "--rate", str(rate_per_s),
               "--duration", str(options.duration_s), "--warmup", str(options.warmup_s),
               "--key-prefix", f"{options.run_id}-{name}"]
    process = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    sampler.watch("client", process.pid)
    assert process.stdout is not None
    try:
        while (line := await process.stdout.readline()) and line.strip() != loadgen.MEASURING.encode():
            pass  # the warm-up
        before, counters = sampler.snapshot(), await committer_counters(stack)
        profilers = [_start_profiler(pid, out, options.duration_s, native=native)
                     for pid, out in _profiled_pids(stack, profile or {})]
        await process.communicate()
    except BaseException:  # Ctrl-C or a failure here: the generator must not outlive the bench
        if process.returncode is None:
            process.kill()
        raise
    code = process.returncode
    phase.cpu_cores = sampler.cores_since(before)
    phase.committer = committer_summary(counters, await committer_counters(stack))
    sampler.unwatch("client")
    for profiler in profilers:
        await asyncio.to_thread(profiler.wait)
    if code != 0:
        raise RuntimeError(f"the load generator exited with {code} in phase {name}")
    records = msgspec.json.decode(out.read_bytes(), type=loadgen.Records)
    summarize(phase, records)
    catch_up = await wait_projector(stack.database_url, timeout_s=CATCH_UP_S_MAX)
    phase.lag = await measure_lag(stack.database_url, records)
    phase.lag.catch_up_s = catch_up
    return phase


# ---- profiling the service's processes (py-spy) -----------------------------------------------

# The Python processes of the service that `--profile` samples, each into `<name>-profile.txt`.
PROFILED_PROCESSES = ("api", "projector", "webhooks")


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def _profiled_pids(stack: Stack, outputs: dict[str, Path]) -> list[tuple[int, Path]]:
    processes = {"api": stack.api, "projector": stack.projector, "webhooks": stack.webhooks}
    return [(processes[name].pid, out) for name, out in outputs.items() if processes.get(name) is not None]


def _start_profiler(pid: int, out: Path, duration_s: float, *, native: bool) -> subprocess.Popen:
    binary = _py_spy()
    assert binary is not None
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(duration_s) - 1)),
         "--format", "raw", "--output", str(out), "--rate", str(PROFILE_RATE_HZ)]
        # Native stacks need the process paused for each sample; Python ones are read while it runs.
        + (["--native"] if native else ["--nonblocking"]),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".log"), "wb"),
    )


def hotspots(raw: Path, *, shown: int = HOTSPOTS_SHOWN) -> dict[str, Any]:
    """From py-spy's collapsed stacks: the functions with the most samples on top of the stack
    (self) and anywhere in it (inclusive, counted once per stack), as % of the active samples."""
    self_counts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        frames = [_shorten(frame) for frame in frames]
        if frames:
            self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            if not frame.endswith(_ROOT_FRAMES):
                inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return {"self": [], "inclusive": []}

    def top(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:shown]
        return [(frame, round(100 * count / total, 1)) for frame, count in ranked]

    return {"self": top(self_counts), "inclusive": top(inclusive), "samples": total}


def _shorten(frame: str) -> str:
    """`f (/long/venv/lib/python3.11/site-packages/aiohttp/web.py)` -> `f (aiohttp/web.py)`."""
    for marker in ("site-packages/", "lib/python3.11/", str(Path.cwd()) + "/"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            return f"{head}({tail.split(marker, 1)[1]}"
    return frame


# ---- the big journal -------------------------------------------------------------------------


@dataclass
class BigJournal:
    target_entries: int
    seeded_entries: int = 0
    seed_s: float | None = None
    projector_replay_s: float | None = None
    skipped: str | None = None


async def grow_journal(stack: Stack, *, target_entries: int) -> BigJournal:
    """Append valid entries with `tools.seed` until the journal holds `target_entries`, then let
    the database settle (checkpoint, statistics) and the projector replay them, as a production
    database that reached this size would have."""
    result = BigJournal(target_entries=target_entries)
    try:
        from tools.seed import seed_journal
    except ImportError as error:
        result.skipped = f"tools.seed is not available ({error})"
        return result
    missing = target_entries - await journal_head(stack.database_url)
    started = time.monotonic()
    if missing > 0:
        await seed_journal(stack.database_url, entries=missing)
        result.seeded_entries = missing
    result.seed_s = round(time.monotonic() - started, 1)
    await _execute(stack.database_url, "VACUUM ANALYZE journal", "VACUUM ANALYZE postings",
                   "VACUUM ANALYZE idempotency", "VACUUM ANALYZE balances", "CHECKPOINT")
    replay = await wait_projector(stack.database_url, timeout_s=SEED_CATCH_UP_TIMEOUT_S)
    result.projector_replay_s = round(replay, 1) if replay is not None else None
    return result


# ---- the report ------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    measured: str
    target: str = ""
    met: bool | None = None


def _ms(value_s: float | None) -> str:
    return "n/a" if value_s is None else f"{value_s * 1000:.1f} ms"


def _latencies(phase: Phase) -> str:
    latency = phase.latency_ms
    return f"{latency['p50']:.1f} / {latency['p95']:.1f} / {latency['p99']:.1f} ms" if latency else "n/a"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: ""}[met]


def table_rows(phases: dict[str, Phase], pgbench: Pgbench, big: BigJournal | None,
               peak_kb: dict[str, int]) -> list[Row]:
    uniform, half, hot = phases["uniform"], phases["uniform-50%"], phases["hot"]
    median = median_uniform(phases)
    rows = [Row("uniform transfers/s (full speed)",
                f"{uniform.throughput_per_s:,.0f}/s ({uniform.committed:,} committed, {uniform.error_count} errors)")]
    if median is not uniform:
        rows.append(Row(f"  median of the {len(SAME_AS_UNIFORM)} uniform phases ({', '.join(SAME_AS_UNIFORM)})",
                        f"{median.throughput_per_s:,.0f}/s ({median.name}; "
                        + " / ".join(f"{phases[name].throughput_per_s:,.0f}" for name in SAME_AS_UNIFORM) + ")"))
    if pgbench.tps is not None:
        rows.append(Row(f"pgbench TPC-B tps (-c {PGBENCH_CLIENTS} -j {PGBENCH_THREADS} -M prepared, -s {PGBENCH_SCALE})",
                        f"{pgbench.tps:,.0f}"))
        if median is not uniform:
            rows.append(Row("uniform ÷ pgbench (first uniform phase)", f"{uniform.throughput_per_s / pgbench.tps:.2f}×"))
        ratio = median.throughput_per_s / pgbench.tps
        rows.append(Row("uniform ÷ pgbench" + (" (median uniform phase)" if median is not uniform else ""),
                        f"{ratio:.2f}×", f"≥ {UNIFORM_VS_PGBENCH_MIN}×", ratio >= UNIFORM_VS_PGBENCH_MIN))
    else:
        rows.append(Row("pgbench TPC-B", f"skipped: {pgbench.skipped}", f"≥ {UNIFORM_VS_PGBENCH_MIN}×", None))
    rows += _cpu_rows(median, pgbench)
    rows.append(Row("latency p50/p95/p99 at full speed", _latencies(uniform)))
    rows.append(Row(f"latency p50/p95/p99 at 50% ({half.rate_per_s:,.0f}/s, open loop)", _latencies(half),
                    f"p99 ≤ {P99_AT_HALF_MS_MAX:.0f} ms",
                    bool(half.latency_ms) and half.latency_ms["p99"] <= P99_AT_HALF_MS_MAX))
    rows.append(Row("  50% phase: committed/s, errors", f"{half.throughput_per_s:,.0f}/s, {half.error_count} errors"))
    hot_ratio = hot.throughput_per_s / median.throughput_per_s if median.throughput_per_s else 0.0
    rows.append(Row("hot vendor transfers/s (90% to one vendor)",
                    f"{hot.throughput_per_s:,.0f}/s ({hot_ratio:.2f}× {_uniform_name(median)}, {hot.error_count} errors)",
                    f"≥ {HOT_VS_UNIFORM_MIN}× uniform", hot_ratio >= HOT_VS_UNIFORM_MIN))
    lag = half.lag
    rows.append(Row("projection lag p50/p99 at 50%", f"{_ms(lag.p50_s)} / {_ms(lag.p99_s)}",
                    f"p99 ≤ {LAG_P99_AT_HALF_MS_MAX:.0f} ms",
                    lag.p99_s is not None and lag.p99_s * 1000 <= LAG_P99_AT_HALF_MS_MAX))
    for phase in (uniform, hot):
        rows.append(Row(f"projection lag p50/p99 at full speed ({phase.name})",
                        f"{_ms(phase.lag.p50_s)} / {_ms(phase.lag.p99_s)}"))
    keeps_up = all(p.lag.keeps_up for p in phases.values())
    slowest = max((p.lag.catch_up_s for p in phases.values() if p.lag.catch_up_s is not None), default=None)
    rows.append(Row("projector keeps up (every phase)",
                    ("yes" if keeps_up else "no") + (f" (head reached ≤ {slowest:.2f} s after load)" if slowest is not None else ""),
                    f"head ≤ {CATCH_UP_S_MAX:.0f} s after load, lag not growing", keeps_up))
    big_phase = phases.get("uniform-1M")
    if big is not None and big_phase is not None:
        ratio = big_phase.throughput_per_s / median.throughput_per_s if median.throughput_per_s else 0.0
        rows.append(Row(f"uniform transfers/s, journal of {big.target_entries:,}",
                        f"{big_phase.throughput_per_s:,.0f}/s ({ratio:.2f}× {_uniform_name(median)} on the empty journal,"
                        f" {big_phase.error_count} errors;"
                        f" p99 {big_phase.latency_ms.get('p99', float('nan')):.1f} ms)",
                        f"≥ {BIG_VS_EMPTY_MIN}× empty", ratio >= BIG_VS_EMPTY_MIN))
    elif big is not None:
        rows.append(Row(f"uniform transfers/s, journal of {big.target_entries:,}", f"not run: {big.skipped}",
                        f"≥ {BIG_VS_EMPTY_MIN}× empty", None))
    else:
        rows.append(Row("uniform transfers/s, journal of 1,000,000", "not run (--quick)", f"≥ {BIG_VS_EMPTY_MIN}× empty"))
    for name in ("api", "projector", "webhooks"):
        mb = peak_kb.get(name, 0) / 1024
        rows.append(Row(f"{name} peak RSS", f"{mb:.0f} MB", f"≤ {RSS_MB_MAX:.0f} MB", 0 < mb <= RSS_MB_MAX))
    return rows


# The processes that are the service (the load generator, the webhook receiver and other tenants
# are not): the tree follower runs inside the projector process, the webhook worker in its own.
SERVER_GROUPS = ("api", "postgres", "nats", "projector", "webhooks")
SERVER_CPU_VS_PGBENCH_MAX = 1.0


def cpu_us_per_transfer(phase: Phase) -> dict[str, float]:
    """CPU microseconds per committed transfer, per process group and for the server as a whole."""
    if not phase.throughput_per_s:
        return {}
    per = {group: cores / phase.throughput_per_s * 1e6 for group, cores in phase.cpu_cores.items()}
    per["server"] = sum(per.get(group, 0.0) for group in SERVER_GROUPS)
    return per


def pgbench_cpu_us_per_transaction(pgbench: Pgbench) -> float | None:
    """PostgreSQL's own CPU per pgbench transaction: the yardstick of issue 16."""
    if not pgbench.tps or "postgres" not in pgbench.cpu_cores:
        return None
    return pgbench.cpu_cores["postgres"] / pgbench.tps * 1e6


# The phases run under the same conditions as *uniform* (closed loop, full speed, the tree follower
# on): the first, which runs right after pgbench and the world's creation and is often the
# unluckiest of a run, and the two with the follower of its A/B. The headline ratios are taken
# from the median of the three, one whole phase (its throughput and its CPU together), so that one
# unlucky phase on a shared machine neither sinks nor flatters the run.
SAME_AS_UNIFORM = ("uniform", "uniform-tree-on-1", "uniform-tree-on-2")


def median_uniform(phases: dict[str, Phase]) -> Phase:
    """The median by throughput of the `SAME_AS_UNIFORM` phases; *uniform* if any is missing."""
    same = [phases[name] for name in SAME_AS_UNIFORM if name in phases]
    if len(same) < len(SAME_AS_UNIFORM):
        return phases["uniform"]
    return sorted(same, key=lambda phase: phase.throughput_per_s)[len(same) // 2]


def _uniform_name(phase: Phase) -> str:
    return "uniform" if phase.name == "uniform" else "the median uniform phase"


def _cpu_rows(phase: Phase, pgbench: Pgbench) -> list[Row]:
    per = cpu_us_per_transfer(phase)
    if not per:
        return []
    groups = ", ".join(f"{g} {per[g]:.0f}" for g in SERVER_GROUPS if g in per)
    rows = [Row(f"server CPU µs per transfer ({phase.name})", f"{per['server']:.0f} µs ({groups})")]
    yardstick = pgbench_cpu_us_per_transaction(pgbench)
    if yardstick:
        ratio = per["server"] / yardstick
        rows.append(Row("  ÷ postgres CPU µs per pgbench transaction", f"{ratio:.2f}× ({yardstick:.0f} µs)",
                        f"≤ {SERVER_CPU_VS_PGBENCH_MAX}×", ratio <= SERVER_CPU_VS_PGBENCH_MAX))
    return rows


HISTORY_FILE = "history.jsonl"


def append_history(out_dir: Path, run_id: str, phases: dict[str, Phase], pgbench: Pgbench,
                   extra: dict | None = None) -> list[dict]:
    """One line per run in `out_dir/history.jsonl`; returns every run so far, oldest first."""
    uniform = phases["uniform"]
    per = cpu_us_per_transfer(uniform)
    yardstick = pgbench_cpu_us_per_transaction(pgbench)
    line = {
        "run_id": run_id,
        "uniform_per_s": round(uniform.throughput_per_s, 1),
        "pgbench_tps": round(pgbench.tps, 1) if pgbench.tps else None,
        "ratio": round(uniform.throughput_per_s / pgbench.tps, 3) if pgbench.tps else None,
        "server_cpu_us": round(per["server"], 1) if per else None,
        "cpu_ratio": round(per["server"] / yardstick, 3) if per and yardstick else None,
        "p99_at_half_ms": phases["uniform-50%"].latency_ms.get("p99"),
        **_median_history(phases, pgbench, yardstick),
        **(extra or {}),  # the extensions' figures (the bulk ratio)
        "others_cores_max": round(max(p.cpu_cores.get("others", 0.0) for p in phases.values()), 2),
    }
    path = out_dir / HISTORY_FILE
    with path.open("a") as out:
        out.write(json.dumps(line) + "\n")
    return [json.loads(text) for text in path.read_text().splitlines() if text.strip()]


def _median_history(phases: dict[str, Phase], pgbench: Pgbench, yardstick: float | None) -> dict:
    """The headline figures of the median uniform phase (`median_uniform`); runs before it was
    recorded have only the first phase's (`uniform_per_s`, `ratio`, `server_cpu_us`, `cpu_ratio`)."""
    median = median_uniform(phases)
    per = cpu_us_per_transfer(median)
    return {
        "median_phase": median.name,
        "median_per_s": round(median.throughput_per_s, 1),
        "median_ratio": round(median.throughput_per_s / pgbench.tps, 3) if pgbench.tps else None,
        "median_server_cpu_us": round(per["server"], 1) if per else None,
        "median_cpu_ratio": round(per["server"] / yardstick, 3) if per and yardstick else None,
    }


def history_chart(history: list[dict], path: Path) -> str | None:
    """The ratio to pgbench (and the CPU ratio) over runs; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no history chart"
    runs = [h["run_id"] for h in history]
    figure, axis = plt.subplots(figsize=(11, 4))
    axis.plot(runs, [h.get("ratio") for h in history], marker="o", label="first uniform ÷ pgbench tps")
    axis.plot(runs, [h.get("cpu_ratio") for h in history], marker="s", label="first uniform: server CPU ÷ postgres CPU per tx")
    axis.plot(runs, [h.get("median_ratio") for h in history], marker="^", label="median uniform ÷ pgbench tps")
    axis.plot(runs, [h.get("median_cpu_ratio") for h in history], marker="v",
              label="median uniform: server CPU ÷ postgres CPU per tx")
    axis.plot(runs, [h.get("bulk_ratio") for h in history], marker="D", label="bulk (batches of 100) ÷ pgbench tps")
    axis.plot(runs, [h.get("bulk_cpu_ratio") for h in history], marker="x",
              label="bulk: server CPU ÷ postgres CPU per tx")
    axis.axhline(UNIFORM_VS_PGBENCH_MIN, color="grey", linestyle=":", linewidth=0.8)
    axis.axhline(SERVER_CPU_VS_PGBENCH_MAX, color="grey", linestyle="--", linewidth=0.8)
    axis.set_ylim(bottom=0)
    axis.set_ylabel("ratio")
    axis.tick_params(axis="x", labelrotation=45, labelsize="small")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)
    figure.suptitle("ledger bench history")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def render(rows: list[Row], title: str) -> str:
    widths = [max(len(r.figure) for r in rows), max(len(r.measured) for r in rows), max(len(r.target) for r in rows)]
    lines = [title, ""]
    header = ("figure", "measured", "target")
    lines.append(f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:<{widths[2]}}  verdict")
    lines.append("-" * (sum(widths) + 15))
    for row in rows:
        lines.append(f"{row.figure:<{widths[0]}}  {row.measured:<{widths[1]}}  {row.target:<{widths[2]}}  "
                     f"{_verdict(row.met)}".rstrip())
    return "\n".join(lines)


def detail_lines(phases: dict[str, Phase], pgbench: Pgbench) -> str:
    """Per phase: where the CPU went, what the committer did, how the projector followed."""
    lines = [f"CPU in cores (CPU s per s; the machine has {os.cpu_count()}; client = loadgen or pgbench;"
             " others = the rest of the machine, i.e. other tenants):"]
    if pgbench.cpu_cores:
        lines.append(f"  pgbench: {_cores(pgbench.cpu_cores)}")
    for phase in phases.values():
        lines.append(f"  {phase.name}: {_cores(phase.cpu_cores)}")
    lines.append("CPU µs per committed transfer, every process (pgbench: per transaction):")
    if pgbench.tps and pgbench.cpu_cores:
        lines.append("  pgbench: " + ", ".join(f"{g} {c / pgbench.tps * 1e6:.0f}" for g, c in
                                               sorted(pgbench.cpu_cores.items(), key=lambda kv: -kv[1])))
    for phase in phases.values():
        per = cpu_us_per_transfer(phase)
        lines.append(f"  {phase.name}: " + ", ".join(f"{g} {v:.0f}" for g, v in sorted(per.items(), key=lambda kv: -kv[1])))
    lines.append("Committer (API /metrics): batches, mean transfers per batch, mean batch transaction, 40001 retries:")
    for phase in phases.values():
        c = phase.committer
        lines.append(f"  {phase.name}: " + (f"{c['batches']:,} batches, {c['batch_mean']} per batch,"
                                            f" {c['commit_ms_mean']} ms, {c['retries']} retries" if c else "n/a"))
    lines.append("Projector: head reached after load stopped; lag p50 in the first / last third of the window:")
    for phase in phases.values():
        lag = phase.lag
        reached = f"{lag.catch_up_s:.2f} s" if lag.catch_up_s is not None else f"NOT within {CATCH_UP_S_MAX:.0f} s"
        lines.append(f"  {phase.name}: {reached}; {_ms(lag.first_third_p50_s)} / {_ms(lag.last_third_p50_s)}"
                     f"{' (growing)' if lag.grows else ''}; {lag.count:,} projected")
    return "\n".join(lines)


def _cores(cores: dict[str, float]) -> str:
    return ", ".join(f"{group} {value:.2f}" for group, value in sorted(cores.items(), key=lambda kv: -kv[1]))


def chart(phases: dict[str, Phase], path: Path) -> str | None:
    """Throughput and latency per 1 s bucket of every phase; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for phase in phases.values():
        series = phase.series
        line, = throughput.plot(series["t_s"], series["committed_per_s"], marker=".", label=phase.name)
        latency.plot(series["t_s"], series["p99_ms"], color=line.get_color(), label=f"{phase.name} p99")
        latency.plot(series["t_s"], series["p50_ms"], color=line.get_color(), linestyle="--",
                     label=f"{phase.name} p50")
    throughput.set_ylabel("committed transfers / s")
    throughput.set_ylim(bottom=0)
    throughput.legend(loc="lower right", fontsize="small")
    throughput.grid(alpha=0.3)
    latency.set_ylabel("latency (ms, log)")
    latency.set_yscale("log")
    latency.set_xlabel("seconds into the measured window (1 s buckets)")
    latency.axhline(P99_AT_HALF_MS_MAX, color="grey", linewidth=0.8, linestyle=":")
    latency.legend(loc="upper right", fontsize="x-small", ncol=2)
    latency.grid(alpha=0.3, which="both")
    figure.suptitle("ledger bench: POST /v1/transfers")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


# ---- the run ---------------------------------------------------------------------------------


def parse_args(argv: list[str], extensions: Sequence[Any] = ()) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ledger bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds before each phase")
    parser.add_argument("--concurrency", type=int, default=128, help="closed-loop workers (default 128)")
    parser.add_argument("--clients", type=int, default=20, help="client principals (default 20)")
    parser.add_argument("--wallets", type=int, default=200, help="wallets, shared among the clients (default 200)")
    parser.add_argument("--vendors", type=int, default=20, help="vendor accounts (default 20)")
    parser.add_argument("--big-journal", type=int, default=1_000_000, metavar="ENTRIES",
                        help="grow the journal to this many entries and run uniform again (0: skip)")
    parser.add_argument("--quick", action="store_true", help="skip the big-journal phase")
    parser.add_argument("--profile", nargs="?", const="python", choices=["python", "native"],
                        help="one more phase with py-spy on the API, the projector and the webhook worker at once, and"
                             " PostgreSQL's time by statement, not part of the table; prints each one's hotspots and"
                             " keeps its raw stacks in the run directory as <process>-profile.txt (`native` adds C"
                             " frames: uvloop, psycopg's and msgspec's C code)")
    parser.add_argument("--profile-scenario", choices=["uniform", "hot"], default="uniform",
                        help="the load of the profiled phase (default uniform)")
    parser.add_argument("--search", action="store_true",
                        help="then searches by metadata (tools.search_bench) on a PostgreSQL of its own, in a journal"
                             " of --big-journal entries (1,000,000 if 0), 10%% of them on one account")
    parser.add_argument("--database-url", help="use this PostgreSQL/CockroachDB instead of an embedded one")
    parser.add_argument("--nats-url", help="use this NATS instead of an embedded one")
    parser.add_argument("--out-dir", type=Path, default=Path(".ledger/bench"))
    parser.add_argument("--keep-data", action="store_true", help="keep the embedded servers' data directories")
    for extension in extensions:
        extension.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.big_journal = 0
    assert args.duration >= 1 and args.concurrency >= 1, "--duration ≥ 1 and --concurrency ≥ 1"
    return args


def _start_stack(args: argparse.Namespace, run_dir: Path) -> Stack:
    postgres = nats = None
    database_url, nats_url = args.database_url, args.nats_url
    if database_url is None:
        # PostgreSQL's time by statement (pg_stat_statements) must be loaded at start: `--profile`
        # counts in every phase (its hooks then cost each a little); the bulk path's statement
        # profile switches counting on for its own phase only (`tools.bulk_bench`).
        settings = {"shared_preload_libraries": "pg_stat_statements"}
        postgres = EmbeddedPostgres(data_dir=run_dir / "pg", port=free_port(), settings=settings)
        postgres.start()
        database_url = postgres.url
    if nats_url is None:
        nats = EmbeddedNats(data_dir=run_dir / "nats", port=free_port())
        nats.start()
        nats_url = nats.url
    from webhooks import events as webhooks

    return Stack(database_url=database_url, nats_url=nats_url, api_url="", run_dir=run_dir,
                 postgres=postgres, nats=nats, webhook_key=webhooks.new_key())


def _watch_servers(sampler: Sampler) -> None:
    """The embedded servers are our own children: the postmaster (with its backends) and NATS."""
    groups = {"postgres": "postgres", "nats-server": "nats"}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := process_stat(int(entry))) is not None and stat[0] == os.getpid():
            group = groups.get(_comm(int(entry)))
            if group is not None:
                sampler.watch(group, int(entry))


def _stop_stack(stack: Stack, *, keep_data: bool) -> None:
    _stop_process(stack.api)
    _stop_process(stack.projector)
    _stop_process(stack.webhooks)
    _stop_process(stack.receiver)
    for server in (stack.nats, stack.postgres):
        if server is not None:
            server.stop()
            if not keep_data:
                shutil.rmtree(server.data_dir, ignore_errors=True)


async def _measure(stack: Stack, sampler: Sampler, args: argparse.Namespace, run_id: str,
                   extensions: Sequence[Any] = ()) -> dict[str, Any]:
    await db.migrate(stack.database_url)
    for extension in extensions:
        await extension.prepare(stack, args)
    port = free_port()
    stack.api_url = f"http://127.0.0.1:{port}"
    stack.api = _spawn(stack, "api", port)
    stack.projector = _spawn(stack, "projector", free_port())
    sampler.watch("api", stack.api.pid, memory=True)
    sampler.watch("projector", stack.projector.pid, memory=True)
    await _wait_ready(stack)
    receiver_url = start_receiver(stack, sampler)
    stack.webhooks = _spawn(stack, "webhooks", free_port())
    sampler.watch("webhooks", stack.webhooks.pid, memory=True)
    progress(f"creating the world: {args.clients} clients, {args.wallets} wallets, {args.vendors} vendors,"
             f" a webhook endpoint per vendor")
    world = await create_world(stack, clients=args.clients, wallets=args.wallets, vendors=args.vendors,
                               webhook_url=receiver_url)
    world_path = stack.run_dir / "world.json"
    world_path.write_bytes(msgspec.json.encode(world))
    options = Options(duration_s=args.duration, warmup_s=args.warmup, concurrency=args.concurrency, run_id=run_id,
                      world_path=world_path)

    pgbench = Pgbench()
    try:
        progress(f"pgbench -i -s {PGBENCH_SCALE}")
        await pgbench_init(stack)
        progress(f"pgbench TPC-B for {args.duration:.0f} s")
        pgbench = await pgbench_run(stack, sampler, duration_s=args.duration)
    except (RuntimeError, FileNotFoundError, psycopg.Error) as error:
        pgbench.skipped = str(error)
    phases: dict[str, Phase] = {}
    progress(f"uniform, closed loop, {args.concurrency} workers, {args.duration:.0f} s")
    stop_sampling = asyncio.Event()
    tree_lag = asyncio.create_task(sample_tree_lag(stack.database_url, stop_sampling))
    phases["uniform"] = await run_phase(stack, sampler, options, name="uniform", scenario="uniform")
    stop_sampling.set()
    half_rate = max(1.0, phases["uniform"].throughput_per_s / 2)
    progress(f"uniform, open loop at {half_rate:,.0f}/s, {args.duration:.0f} s")
    half_from = await journal_head(stack.database_url)
    phases["uniform-50%"] = await run_phase(stack, sampler, options, name="uniform-50%", scenario="uniform",
                                            rate_per_s=half_rate)
    half_window = (half_from, await journal_head(stack.database_url))
    progress(f"hot vendor, closed loop, {args.duration:.0f} s")
    phases["hot"] = await run_phase(stack, sampler, options, name="hot", scenario="hot")
    progress("waiting for every vendor payment to reach the webhook receiver")
    webhooks = await drain_webhooks(stack, world, half_window)
    progress(f"uniform four more times, without / with / with / without the Merkle tree follower, {args.duration:.0f} s each")
    phases.update(await tree_follower_ab(stack, sampler, options))
    profile = None
    if args.profile:
        profile = await _profile(stack, sampler, options, native=args.profile == "native", scenario=args.profile_scenario)
    extended = {}
    for extension in extensions:
        extended[extension.NAME] = await extension.measure(stack, sampler, options, args)
        phases.update(extended[extension.NAME].phases)
    big = None
    if args.big_journal > 0:
        progress(f"growing the journal to {args.big_journal:,} entries (tools.seed)")
        big = await grow_journal(stack, target_entries=args.big_journal)
        if big.skipped is None:
            progress(f"seeded in {big.seed_s} s, projector at the head {big.projector_replay_s} s later;"
                     f" uniform again, {args.duration:.0f} s")
            phases["uniform-1M"] = await run_phase(stack, sampler, options, name="uniform-1M", scenario="uniform")
    progress("ledger audit of the journal (tools.audit_bench)")
    from tools.audit_bench import measure_audit
    audit = await asyncio.to_thread(measure_audit, stack.database_url)
    for extension in extensions:
        await extension.finish(stack, sampler, world, args, extended[extension.NAME])
    return {"phases": phases, "pgbench": pgbench, "big": big, "profile": profile, "tree_lag": await tree_lag,
            "audit": audit, "webhooks": webhooks, "extended": extended}


def start_receiver(stack: Stack, sampler: Sampler) -> str:
    """The webhook receiver (`tools.webhook_bench --receiver`), a process of its own: answers 204
    and writes one line per event: position, seconds from commit to arrival."""
    port = free_port()
    log = open(stack.run_dir / "receiver.log", "ab")
    with log:
        stack.receiver = subprocess.Popen(
            [sys.executable, "-m", "tools.webhook_bench", "--receiver", str(port),
             "--out", str(stack.run_dir / "webhook-arrivals.txt")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sampler.watch("receiver", stack.receiver.pid)
    return f"http://127.0.0.1:{port}/ok"


@dataclass
class Webhooks:
    expected: int = 0  # vendor payments committed (each is one event to its vendor's endpoint)
    delivered: int = 0  # distinct positions the receiver got
    drain_s: float | None = None  # after the last phase, until every one had arrived
    half_latency_ms: dict[str, float] = field(default_factory=dict)  # commit → arrival, in the 50% phase


def _arrivals(path: Path) -> dict[int, float]:
    found: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            position, seconds = line.split()
            found.setdefault(int(position), float(seconds))  # a duplicate delivery keeps the first
    return found


async def drain_webhooks(stack: Stack, world: loadgen.World, half_window: tuple[int, int]) -> Webhooks:
    result = Webhooks(expected=await _scalar(
        stack.database_url, "SELECT count(DISTINCT position) FROM postings WHERE account_id = ANY(%s::uuid[])",
        (list(world.vendors),)))
    path = stack.run_dir / "webhook-arrivals.txt"
    started = time.monotonic()
    while time.monotonic() - started < WEBHOOK_DRAIN_S_MAX:
        arrived = _arrivals(path)
        if len(arrived) >= result.expected:
            result.drain_s = round(time.monotonic() - started, 2)
            break
        await asyncio.sleep(0.2)
    arrived = _arrivals(path)
    result.delivered = len(arrived)
    half = sorted(seconds for position, seconds in arrived.items() if half_window[0] < position <= half_window[1])
    if half:
        result.half_latency_ms = {name: round(percentile(half, q) * 1000, 1) for name, q in (("p50", 0.5), ("p99", 0.99))}
    return result


def webhook_rows(webhooks: Webhooks) -> list[Row]:
    """Issue 14 in the same run: every vendor payment delivered, and how fast at 50% load."""
    drained = f", all within {webhooks.drain_s:.1f} s after the last phase" if webhooks.drain_s is not None else ""
    rows = [Row("webhooks delivered (one endpoint per vendor)", f"{webhooks.delivered:,} of {webhooks.expected:,}{drained}",
                "every one", webhooks.delivered >= webhooks.expected)]
    if webhooks.half_latency_ms:
        latency = webhooks.half_latency_ms
        rows.append(Row("webhook commit → received p50/p99 at 50%", f"{latency['p50']:.0f} / {latency['p99']:.0f} ms",
                        f"p99 ≤ {WEBHOOK_P99_AT_HALF_MS_MAX:.0f} ms", latency["p99"] <= WEBHOOK_P99_AT_HALF_MS_MAX))
    return rows


def _restart_projector(stack: Stack, sampler: Sampler, **env: str) -> None:
    _stop_process(stack.projector)
    sampler.unwatch("projector")
    stack.projector = _spawn(stack, "projector", free_port(), **env)
    sampler.watch("projector", stack.projector.pid, memory=True)


TREE_AB = (("uniform-tree-off-1", False), ("uniform-tree-on-1", True), ("uniform-tree-on-2", True),
           ("uniform-tree-off-2", False))


async def tree_follower_ab(stack: Stack, sampler: Sampler, options: Options) -> dict[str, Phase]:
    """Issue 15's A/B in the same run, in the order off, on, on, off so that a drift over the
    run (the journal growing, the database warming) weighs on both sides alike: the uniform phase
    with the projector restarted without its Merkle tree follower (`LEDGER_TREE_FOLLOWER=0`) or
    with it (which catches up from its own checkpoint)."""
    phases, following = {}, True
    for name, tree_on in TREE_AB:
        if tree_on != following:
            _restart_projector(stack, sampler, **({} if tree_on else {"LEDGER_TREE_FOLLOWER": "0"}))
            following = tree_on
        phases[name] = await run_phase(stack, sampler, options, name=name, scenario="uniform")
    if not following:
        _restart_projector(stack, sampler)
    return phases


async def sample_tree_lag(url: str, stop: asyncio.Event) -> list[int]:
    """The Merkle tree's lag behind the journal head, in entries, every `TREE_LAG_SAMPLE_S`."""
    samples: list[int] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            samples.append(max(0, await tree_store.entries_behind(conn)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), TREE_LAG_SAMPLE_S)
    return samples


def tree_rows(phases: dict[str, Phase], lag: list[int]) -> list[Row]:
    """Issue 15: what the Merkle tree follower costs the write path, and how far behind it runs."""
    on = [phases[name] for name, tree_on in TREE_AB if tree_on and name in phases]
    off = [phases[name] for name, tree_on in TREE_AB if not tree_on and name in phases]
    rows = []
    rate_on, rate_off = (sum(p.throughput_per_s for p in side) / len(side) if side else 0.0 for side in (on, off))
    if rate_on and rate_off:
        cost = 1 - rate_on / rate_off
        # How far apart two phases under the same condition landed: the noise this cost sits in.
        spread = max(abs(a.throughput_per_s - b.throughput_per_s) / ((a.throughput_per_s + b.throughput_per_s) / 2)
                     for a, b in (on, off) if a.throughput_per_s and b.throughput_per_s) if len(on) == len(off) == 2 else 0.0
        rows.append(Row("Merkle tree follower: uniform with ÷ without (off, on, on, off)",
                        f"{rate_on:,.0f}/s ÷ {rate_off:,.0f}/s (cost {cost:+.1%}; "
                        + " / ".join(f"{p.throughput_per_s:,.0f}" for p in off[:1] + on + off[1:])
                        + f"; same-condition spread {spread:.1%})",
                        f"cost ≤ {TREE_COST_MAX:.0%}", cost <= TREE_COST_MAX))
        per_on = [cpu_us_per_transfer(p) for p in on]
        per_off = [cpu_us_per_transfer(p) for p in off]
        projector_on = sum(p.get("projector", 0.0) for p in per_on) / len(per_on)
        projector_off = sum(p.get("projector", 0.0) for p in per_off) / len(per_off)
        server_on = sum(p.get("server", 0.0) for p in per_on) / len(per_on)
        extra = projector_on - projector_off
        rows.append(Row("  follower CPU µs per transfer (projector with − without)",
                        f"{extra:.0f} µs of {server_on:.0f} µs server CPU ({extra / server_on:.1%})" if server_on else "n/a"))
    if lag:
        ordered = sorted(lag)
        rate = phases["uniform"].throughput_per_s or 1.0
        p50, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
        rows.append(Row("Merkle tree lag behind the head p50/p99 (uniform)",
                        f"{p50:,.0f} / {p99:,.0f} entries (≈ {p50 / rate * 1000:.0f} / {p99 / rate * 1000:.0f} ms"
                        f" at {rate:,.0f}/s; {len(lag)} samples)"))
    return rows


async def _profile(stack: Stack, sampler: Sampler, options: Options, *, native: bool,
                   scenario: str = "uniform") -> dict[str, dict] | None:
    """One more phase of `scenario` with py-spy sampling every service process at once; per process, its
    hotspots and the path of its raw collapsed stacks (`<name>-profile.txt` in the run directory)."""
    if _py_spy() is None:
        progress("py-spy is not installed (pip install py-spy): no profile")
        return None
    outputs = {name: stack.run_dir / f"{name}-profile.txt" for name in PROFILED_PROCESSES}
    progress(f"{scenario} again with py-spy on {', '.join(outputs)}, not part of the table")
    statements = await _statements_reset(stack)
    phase = await run_phase(stack, sampler, options, name=f"{scenario}-profiled", scenario=scenario, profile=outputs,
                            native=native)
    profiles = {}
    for name, raw in outputs.items():
        if not raw.exists():
            profiles[name] = {"error": f"py-spy wrote nothing; see {raw.with_suffix('.log')}"}
        else:
            profiles[name] = {"throughput_per_s": phase.throughput_per_s, "raw": str(raw), "scenario": scenario,
                              **hotspots(raw)}
    if statements is not None:
        profiles["postgres"] = await _statements_read(stack, since_head=statements)
    return profiles


STATEMENTS_SHOWN = 15


async def _statements_reset(stack: Stack) -> int | None:
    """Start pg_stat_statements afresh (embedded PostgreSQL only); returns the journal head then."""
    if stack.postgres is None:
        return None
    try:
        async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error as error:
        progress(f"no statement profile: {error}")
        return None
    return await journal_head(stack.database_url)


async def _statements_read(stack: Stack, *, since_head: int) -> dict[str, Any]:
    """PostgreSQL's execution time by statement since `_statements_reset`, per committed transfer.
    Execution time is not CPU (it includes lock and I/O waits, and leaves out parsing, the commit's
    WAL flush and the protocol), but it says which statements the server spends itself on."""
    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
        transfers = max(1, await journal_head(stack.database_url) - since_head)
        rows = await (await conn.execute(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time, rows FROM pg_stat_statements"
            " ORDER BY total_exec_time DESC")).fetchall()
    total_ms = sum(row[2] for row in rows)
    return {"transfers": transfers, "exec_us_per_transfer": round(total_ms * 1000 / transfers, 1),
            "statements": [{"query": query[:STATEMENT_CHARS_SHOWN], "calls_per_transfer": round(calls / transfers, 3),
                            "exec_us_per_transfer": round(ms * 1000 / transfers, 1), "rows": rows_}
                           for query, calls, ms, rows_ in rows[:STATEMENTS_SHOWN]]}


STATEMENT_CHARS_SHOWN = 110


def _statements_text(profile: dict[str, Any]) -> str:
    lines = [f"postgres statements (pg_stat_statements during the profiled phase, {profile['transfers']:,} transfers):"
             f" {profile['exec_us_per_transfer']:.0f} µs of execution per transfer in all; the"
             f" {len(profile['statements'])} costliest, µs and calls per transfer:"]
    lines += [f"    {one['exec_us_per_transfer']:6.1f} µs  {one['calls_per_transfer']:6.3f}×  {one['query']}"
              for one in profile["statements"]]
    return "\n".join(lines)


def progress(message: str) -> None:
    print(f"[bench {dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _environment() -> dict[str, str]:
    """The LEDGER_* settings the services ran with (tuning knobs such as LEDGER_BATCH_MAX)."""
    hidden = {"LEDGER_DATABASE_URL", "LEDGER_NATS_URL", "LEDGER_HTTP_HOST", "LEDGER_HTTP_PORT", "LEDGER_METRICS_PORT"}
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("LEDGER_") and k not in hidden}


def main(argv: list[str], extensions: Sequence[Any] = ()) -> int:
    """The run. `extensions` add phases and rows without this module importing them (`ledger
    bench` is `tools.bulk_bench`, which passes itself): each has `NAME`, `add_arguments(parser)`,
    `prepare(stack, args)` after the migrations, `measure(stack, sampler, options, args)` after
    the tree follower's A/B (a result with `phases`), `finish(stack, sampler, world, args,
    result)` after the audit, and `rows`, `details` and `history` for the report."""
    args = parse_args(argv, extensions)
    started = time.monotonic()
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (args.out_dir / f"run-{run_id}").absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    progress(f"run directory {run_dir}")
    sampler = Sampler()
    sampler.start()
    stack = _start_stack(args, run_dir)
    _watch_servers(sampler)
    try:
        measured = asyncio.run(_measure(stack, sampler, args, run_id, extensions))
    finally:
        _stop_stack(stack, keep_data=args.keep_data)
        sampler.stop()
    search = _search_bench(args)
    phases, pgbench, big, profile = measured["phases"], measured["pgbench"], measured["big"], measured["profile"]
    title = (f"ledger bench {run_id}: {args.duration:.0f} s per phase, {args.concurrency} closed-loop workers,"
             f" {args.wallets} wallets, {args.vendors} vendors, {os.cpu_count()} cores, one API process"
             + (f", {_environment()}" if _environment() else ""))
    rows = (table_rows(phases, pgbench, big, sampler.peak_kb) + tree_rows(phases, measured["tree_lag"])
            + webhook_rows(measured["webhooks"]))
    for extension in extensions:
        rows += extension.rows(measured["extended"][extension.NAME], phases, pgbench)
    if (audit := measured["audit"]) is not None:
        rows.append(Row(f"ledger audit entries/s, journal of {audit.entries:,}",
                        f"{audit.entries_per_s:,.0f}/s ({audit.cpu_us_per_entry} µs CPU/entry, peak RSS"
                        f" {audit.peak_rss_mib:.0f} MiB, ok {audit.ok})", f"≥ {AUDIT_ENTRIES_PER_S_MIN:,}/s",
                        audit.ok and audit.entries_per_s >= AUDIT_ENTRIES_PER_S_MIN))
    text = (render(rows, title) + _noise_warning(phases, pgbench) + "\n\n" + detail_lines(phases, pgbench)
            + "".join(extension.details(measured["extended"][extension.NAME]) for extension in extensions))
    for name, one in (profile or {}).items():
        if name == "postgres":
            text += "\n\n" + _statements_text(one)
            continue
        text += "\n\n" + (_profile_text(name, one) if one.get("self") else
                           f"{name} profile: {one.get('error', 'no samples')}")
    if search is not None:
        from tools.search_bench import report as search_report
        text += "\n\n" + search_report(search)
    chart_note = chart(phases, run_dir / "chart.png")
    history = append_history(args.out_dir, run_id, phases, pgbench, extra={
        key: value for extension in extensions
        for key, value in extension.history(measured["extended"][extension.NAME], pgbench).items()})
    history_note = history_chart(history, args.out_dir / "history.png")
    elapsed = time.monotonic() - started
    text += f"\n\nresults: {run_dir / 'result.json'}" + (f"\nchart: {run_dir / 'chart.png'}" if chart_note is None
                                                            else f"\n{chart_note}")
    text += (f"\nhistory: {args.out_dir / HISTORY_FILE} ({len(history)} runs)"
             + (f"; chart {args.out_dir / 'history.png'}" if history_note is None else f"; {history_note}"))
    text += f"\nwhole run: {elapsed:.0f} s"
    result = {
        "run_id": run_id, "arguments": {k: str(v) for k, v in vars(args).items()}, "environment": _environment(),
        "cpu_count": os.cpu_count(), "elapsed_s": round(elapsed, 1),
        "table": [asdict(row) for row in rows],
        "pgbench": asdict(pgbench), "big_journal": asdict(big) if big else None,
        "phases": {name: {**asdict(phase), "lag": {**asdict(phase.lag), "grows": phase.lag.grows,
                                                   "keeps_up": phase.lag.keeps_up}}
                   for name, phase in phases.items()},
        "peak_rss_mb": {name: round(kb / 1024, 1) for name, kb in sampler.peak_kb.items()},
        "profile": profile,
        "audit": asdict(audit) if audit is not None else None,
        "webhooks": asdict(measured["webhooks"]),
        "search": search,
        **{name: asdict(one) for name, one in measured["extended"].items()},
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (run_dir / "table.txt").write_text(text + "\n")
    print(text)
    return 0


def _search_bench(args: argparse.Namespace) -> dict[str, Any] | None:
    """`--search`: tools.search_bench, once the stack is stopped, so it has the machine to itself."""
    if not args.search:
        return None
    from tools import search_bench

    progress("searches by metadata (tools.search_bench)")
    return search_bench.run(entries=args.big_journal or 1_000_000)


def _noise_warning(phases: dict[str, Phase], pgbench: Pgbench) -> str:
    """A line under the table when other tenants took a good part of the machine meanwhile."""
    others = [p.cpu_cores.get("others", 0.0) for p in phases.values()] + [pgbench.cpu_cores.get("others", 0.0)]
    worst = max(others)
    if worst < NOISE_CORES_WARN:
        return ""
    return (f"\nWARNING: other processes used up to {worst:.2f} of {os.cpu_count()} cores during the phases"
            f" (see `others` below): absolute figures are low and vary; compare the ratios, measured side by side.")


def _profile_text(name: str, profile: dict) -> str:
    lines = [f"{name} profile (py-spy, {profile['samples']} active samples during a {profile.get('scenario', 'uniform')} full-speed phase at"
             f" {profile['throughput_per_s']:,.0f}/s; raw stacks in {profile['raw']}):",
             "  self time (on top of the stack):"]
    lines += [f"    {share:5.1f}%  {frame}" for frame, share in profile["self"]]
    lines.append("  inclusive (anywhere in the stack):")
    lines += [f"    {share:5.1f}%  {frame}" for frame, share in profile["inclusive"]]
    return "\n".join(lines)
