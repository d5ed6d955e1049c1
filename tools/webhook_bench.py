"""Webhook delivery latency and the cost of webhooks to writes: `python -m tools.webhook_bench`.

On its own PostgreSQL and NATS (from the wheels, in a temporary directory), with one `ledger api`
(rate limit off), one `ledger projector` and, for the runs with webhooks, one `ledger webhooks`:

1. write throughput without webhooks: `--concurrency` closed-loop clients POST transfers from a
   system account to two vendor accounts for `--duration` seconds (no worker, no endpoints);
2. delivery latency at about half of (1)'s throughput (`--load-share`), open loop, with a healthy
   receiver registered on vendor A and an always-failing one (500) on vendor B, the worker
   running (it has delivered a probe event before the window opens, so its start-up is not
   counted; `--cold-start` opens the window as it is spawned): the receiver (a process of its
   own) takes each event's `created_at` (the entry's commit time) from the body and its own clock
   at arrival; p50/p99 over the healthy receiver's events of that window (once all arrived);
3. write throughput with webhooks: (1) again, the worker delivering to both receivers;
4. with `--baseline-again`, (1) once more after stopping the worker: the machine's load moves
   between phases (other work on it, the database growing), so a second baseline shows how much.

`cores_used` gives, per phase, the CPU each component used on average (from `/proc`), and the
whole machine's (`machine_busy`, other work included): the worker's CPU per event is the figure
that the machine's load moves least.

The load generator runs in this process and the receiver in another, on the same machine as the
servers, so they compete for its CPUs: the figures are for this machine as it is, not a model.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import psycopg

from ledger import db, principals, webhooks
from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port

READY_S_MAX = 60.0
DRAIN_S_MAX = 60.0
REPO = Path(__file__).resolve().parents[1]


def _receiver_main(port: int, out: str) -> None:
    """The receiver process: 204 on /ok, 500 on /fail; one line per /ok event: latency seconds."""
    from aiohttp import web

    sink = open(out, "a", buffering=1)

    async def ok(request: web.Request) -> web.Response:
        arrived = time.time()
        event = json.loads(await request.read())
        committed = dt.datetime.strptime(event["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
        sink.write(f"{event['position']} {arrived - committed.timestamp():.6f}\n")
        return web.Response(status=204)

    async def fail(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/fail", fail)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.pg = EmbeddedPostgres(data_dir=root / "pg", port=free_port(), settings={"fsync": "off"})
        self.nats = EmbeddedNats(data_dir=root / "nats", port=free_port())
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.key = webhooks.new_key()
        self.children: list[subprocess.Popen] = []
        self.admin = ""
        self.funding = ""
        self.vendors: list[str] = []
        self.named: dict[str, int] = {}  # component -> pid, for the CPU figures

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by each component (PostgreSQL: the postmaster and its backends),
        and by the whole machine, other engineers' work included (`machine_busy`). Linux `/proc`."""
        pids = {**self.named, "postgres": self.pg._proc.pid, "nats": self.nats._proc.pid, "loadgen": os.getpid()}
        backends = _children(self.pg._proc.pid)
        used = {name: _cpu_of(pid) + (sum(map(_cpu_of, backends)) if name == "postgres" else 0.0)
                for name, pid in pids.items()}
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        used["machine_busy"] = (sum(fields) - fields[3] - fields[4]) / TICKS_PER_S  # minus idle and iowait
        return used

    def env(self) -> dict[str, str]:
        return {**os.environ, "LEDGER_DATABASE_URL": self.pg.url, "LEDGER_NATS_URL": self.nats.url,
                "LEDGER_HTTP_PORT": str(self.port), "LEDGER_RATE_PER_S": "0", "LEDGER_WEBHOOK_KEY": self.key,
                "LEDGER_WEBHOOK_ALLOW_PRIVATE": "1", "LEDGER_LOG_LEVEL": "WARNING"}

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.root / f"{name}.log", "ab")
        child = subprocess.Popen(argv, env=self.env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        self.children.append(child)
        self.named[name] = child.pid
        return child

    async def start(self, http: aiohttp.ClientSession) -> None:
        await asyncio.gather(asyncio.to_thread(self.pg.start), asyncio.to_thread(self.nats.start))
        await db.migrate(self.pg.url)
        _, self.admin = await principals.create_at(self.pg.url, role="admin", name="bench")
        self.spawn("api", [sys.executable, "-m", "ledger.cli", "api"])
        self.spawn("projector", [sys.executable, "-m", "ledger.cli", "projector"])
        deadline = time.monotonic() + READY_S_MAX
        while True:
            try:
                async with http.get(self.api_url + "/healthz") as reply:
                    if reply.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not come up")
            await asyncio.sleep(0.1)
        self.funding = (await self.post(http, "/v1/accounts", {"kind": "system", "currency": "USD"}))["id"]
        vendor_id = (await self.post(http, "/v1/principals", {"role": "vendor", "name": "shop"}))["id"]
        for _ in range(2):
            account = await self.post(http, "/v1/accounts", {"kind": "vendor", "currency": "USD", "owner_id": vendor_id})
            self.vendors.append(account["id"])

    async def post(self, http, path: str, body: dict, key: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.admin}"}
        if key:
            headers["Idempotency-Key"] = key
        async with http.post(self.api_url + path, json=body, headers=headers) as reply:
            answer = await reply.json()
            if reply.status >= 300:
                raise RuntimeError(f"{path}: {reply.status} {answer}")
            return answer

    async def pay(self, http, number: int) -> bool:
        body = {"from_account_id": self.funding, "to_account_id": self.vendors[number % 2], "amount": 1,
                "currency": "USD"}
        headers = {"Authorization": f"Bearer {self.admin}", "Idempotency-Key": uuid.uuid4().hex}
        try:
            async with http.post(self.api_url + "/v1/transfers", json=body, headers=headers) as reply:
                await reply.read()
                return reply.status == 201
        except aiohttp.ClientError:
            return False

    async def closed_loop(self, http) -> float:
        """Transfers per second with `--concurrency` clients for `--duration` seconds."""
        until = time.monotonic() + self.args.duration
        done = 0

        async def client(index: int) -> None:
            nonlocal done
            number = index
            while time.monotonic() < until:
                ok = await self.pay(http, number)  # not `done += await ...`: that reads `done` before the wait
                done += ok
                number += self.args.concurrency

        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(self.args.concurrency)))
        return done / (time.monotonic() - started)

    async def open_loop(self, http, rate_per_s: float) -> tuple[int, int]:
        """Send at `rate_per_s` for `--duration` seconds; the journal positions it spans."""
        head_before = await self.head()
        interval, start, tasks = 1.0 / rate_per_s, time.monotonic(), []
        number = 0
        while (due := start + number * interval) < start + self.args.duration:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(self.pay(http, number)))
            number += 1
        await asyncio.gather(*tasks)
        return head_before, await self.head()

    async def head(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as conn:
            return (await (await conn.execute("SELECT position FROM journal_head WHERE id = 1")).fetchone())[0]

    async def start_webhooks(self, http, receiver_port: int) -> None:
        for vendor, path in zip(self.vendors, ("ok", "fail")):
            await self.post(http, f"/v1/vendors/{vendor}/webhooks", {"url": f"http://127.0.0.1:{receiver_port}/{path}"})
        # The worker starts at the head: the baseline's entries are history, not part of this run.
        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as conn:
            await conn.execute("INSERT INTO webhook_checkpoint (name, position) SELECT 'main', position FROM journal_head"
                               " WHERE id = 1")
        self.spawn("webhooks", [sys.executable, "-m", "ledger.cli", "webhooks"])

    async def worker_ready(self, http, arrivals: Path) -> float:
        """Seconds until a probe payment reached the healthy receiver: the worker is up (imports,
        pool, NATS consumer), so the latency window measures a running worker, not its start."""
        started = time.monotonic()
        head = await self.head()
        if not await self.pay(http, 0):  # vendor 0 is the healthy receiver's
            raise RuntimeError("the probe payment failed")
        while not _latencies(arrivals, head, head + 1_000_000):
            if time.monotonic() - started > READY_S_MAX:
                raise RuntimeError("the webhook worker did not deliver the probe")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    def stop_worker(self) -> None:
        """Stop the worker (for a second baseline after the run with webhooks: the database has
        grown since the first, so both are shown)."""
        worker = self.children[-1]
        worker.terminate()
        worker.wait(20)

    def stop(self) -> None:
        for child in self.children:
            child.terminate()
        for child in self.children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        self.nats.stop()
        self.pg.stop()


TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # ended
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            pass
    return found


def _cpu_used(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores used on average by each component between two `cpu_s` readings."""
    return {name: round((after.get(name, 0.0) - before.get(name, 0.0)) / seconds, 3) for name in after}


def _latencies(path: Path, first: int, last: int) -> list[float]:
    found = {}
    for line in path.read_text().splitlines():
        position, seconds = line.split()
        if first < int(position) <= last:
            found.setdefault(int(position), float(seconds))  # the first arrival of each event
    return sorted(found.values())


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> dict:
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="ledger-webhook-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, root)
    receiver_port, arrivals = free_port(), root / "arrivals.txt"
    receiver = subprocess.Popen([sys.executable, "-m", "tools.webhook_bench", "--receiver", str(receiver_port),
                                 "--out", str(arrivals)], cwd=REPO)
    bench.named["receiver"] = receiver.pid
    cpu: dict[str, dict[str, float]] = {}
    ready_s = without_again = None

    async def measured(phase: str, work):
        before, started = bench.cpu_s(), time.monotonic()
        result = await work
        cpu[phase] = _cpu_used(before, bench.cpu_s(), time.monotonic() - started)
        return result

    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await bench.start(http)
            await bench.closed_loop(http)  # warm-up, not counted
            without = await measured("without_webhooks", bench.closed_loop(http))
            await bench.start_webhooks(http, receiver_port)
            if not args.cold_start:
                ready_s = await bench.worker_ready(http, arrivals)
            rate = without * args.load_share
            first, last = await measured("latency_run", bench.open_loop(http, rate))
            expected = (last - first) // 2  # every other payment goes to the healthy receiver's vendor
            deadline = time.monotonic() + DRAIN_S_MAX
            while len(latencies := _latencies(arrivals, first, last)) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            with_webhooks = await measured("with_webhooks", bench.closed_loop(http))
            if args.baseline_again:
                bench.stop_worker()
                without_again = await measured("without_webhooks_again", bench.closed_loop(http))
    finally:
        bench.stop()
        receiver.terminate()
        receiver.wait(10)
    return {
        "throughput_without_webhooks_per_s": round(without, 1),
        "throughput_with_webhooks_per_s": round(with_webhooks, 1),
        "throughput_change": round(with_webhooks / without - 1, 4),
        "throughput_without_webhooks_again_per_s": None if without_again is None else round(without_again, 1),
        "latency_run_rate_per_s": round(rate, 1),
        "latency_events_expected": expected,
        "latency_events_delivered": len(latencies),
        "latency_p50_ms": round(_quantile(latencies, 0.50) * 1000, 1) if latencies else None,
        "latency_p99_ms": round(_quantile(latencies, 0.99) * 1000, 1) if latencies else None,
        "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "worker_ready_s": None if ready_s is None else round(ready_s, 2),
        "cores_used": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.webhook_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of each phase (default 15)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients (default 32)")
    parser.add_argument("--load-share", type=float, default=0.5, help="share of full throughput for the latency run")
    parser.add_argument("--cold-start", action="store_true",
                        help="start the latency window as the worker is spawned (its start-up counted in)")
    parser.add_argument("--baseline-again", action="store_true",
                        help="after the run with webhooks, stop the worker and measure writes without it again")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--receiver", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver is not None:
        _receiver_main(args.receiver, args.out)
        return 0
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
