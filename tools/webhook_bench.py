"""Webhook delivery latency and the cost of webhooks to writes: `python -m tools.webhook_bench`.

On its own PostgreSQL and NATS (from the wheels, in a temporary directory), with one `ledger api`
(rate limit off), one `ledger projector` and one `ledger webhooks`, three vendor accounts: A with a healthy receiver (204), B with an always-failing
one (500), C with no endpoint. Phases, each `--duration` seconds:

- `full-without` (x3) and `full-with` (x2), alternated: `--concurrency` closed-loop clients POST
  transfers from a system account as fast as they go; without webhooks they pay C and the worker is
  stopped (SIGTERM; when it starts again it only skips C's entries), with webhooks they pay
  A and B alternately, so every transfer is an event, half of them to the failing receiver. The
  write throughput with webhooks is compared with the mean of the phases without around it.
- `half-with` and `half-without`: open loop at `--load-share` (half) of the first `full-without`,
  with and without webhooks; request latency runs from the due time (no coordinated omission).
  The receiver (a process of its own) takes each event's `created_at` (the entry's commit time)
  from the body and its own clock at arrival: the delivery latency p50/p99 is over the healthy
  receiver's events of `half-with` (once all arrived). The worker has delivered a probe event
  before the first window with webhooks opens, so its start-up is not counted.

`cores_used` gives, per phase, the CPU each component used on average (from `/proc`), and the
whole machine's (`machine_busy`, other work included); `cpu_us_per_transfer` divides it by the
phase's committed transfers. The worker's CPU per event is the figure the machine's load moves
least.

The load generator runs in this process and the receiver in another, on the same machine as the
servers, so they compete for its CPUs. The receiver stands for the vendors' servers, which would
not be on the ledger's machine: it is a bare asyncio protocol (no framework) so that it takes as
little of the cores as it can; its CPU is shown all the same.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import msgspec
import psycopg

from ledger import db, principals, store
from webhooks import worker as webhook_worker
from webhooks import events as webhooks
from webhooks import store as ws
from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port

READY_S_MAX = 60.0
DRAIN_S_MAX = 60.0
REPO = Path(__file__).resolve().parents[1]


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
SERVER_ERROR = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
RECEIVER_HEAD_BYTES_MAX = 16 * 1024


class _Receiver(asyncio.Protocol):
    """A receiver as lean as HTTP/1.1 allows (keep-alive, Content-Length bodies, no pipelining
    needed), so that the vendors' side, which is not the ledger's and would be on other machines,
    takes as little of the shared cores as it can: 204 on /ok, with one line per event (position,
    seconds from commit to arrival), 500 on anything else."""

    def __init__(self, sink) -> None:
        self._sink = sink
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (head_end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = self._buffer[:head_end].decode("latin-1").split("\r\n")
            length = next((int(value) for name, _, value in (line.partition(":") for line in head[1:])
                           if name.strip().lower() == "content-length"), 0)
            end = head_end + 4 + length
            if len(self._buffer) < end:
                break
            body, self._buffer = self._buffer[head_end + 4:end], self._buffer[end:]
            if head[0].split(" ")[1] == "/ok":
                arrived = time.time()
                event = msgspec.json.decode(body)
                committed = dt.datetime.fromisoformat(event["created_at"].replace("Z", "+00:00")).timestamp()
                self._sink.write(f"{event['position']} {arrived - committed:.6f}\n")
                self._transport.write(NO_CONTENT)
            else:
                self._transport.write(SERVER_ERROR)
        if len(self._buffer) > RECEIVER_HEAD_BYTES_MAX + 1024 * 1024:
            self._transport.close()  # not a webhook


def _receiver_main(port: int, out: str) -> None:
    """The receiver process: serve `_Receiver` on 127.0.0.1:`port` until terminated."""
    import uvloop

    sink = open(out, "a", buffering=1)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(lambda: _Receiver(sink), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


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
        self.worker: subprocess.Popen | None = None

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
                "LEDGER_WEBHOOK_ALLOW_PRIVATE": "1", "LEDGER_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING")}

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
        self.spawn("api", [sys.executable, "-m", "cli", "api"])
        self.spawn("projector", [sys.executable, "-m", "cli", "projector"])
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
        for _ in range(3):  # A: the healthy receiver's, B: the failing one's, C: no endpoint
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

    async def pay(self, http, vendor: str) -> bool:
        body = {"from_account_id": self.funding, "to_account_id": vendor, "amount": 1, "currency": "USD"}
        headers = {"Authorization": f"Bearer {self.admin}", "Idempotency-Key": uuid.uuid4().hex}
        try:
            async with http.post(self.api_url + "/v1/transfers", json=body, headers=headers) as reply:
                await reply.read()
                return reply.status == 201
        except aiohttp.ClientError:
            return False

    async def closed_loop(self, http, vendors: list[str]) -> dict:
        """`--concurrency` clients paying `vendors` in turn for `--duration` seconds, as fast as
        they go: transfers committed and per second."""
        until = time.monotonic() + self.args.duration
        done = 0

        async def client(index: int) -> None:
            nonlocal done
            number = index
            while time.monotonic() < until:
                ok = await self.pay(http, vendors[number % len(vendors)])  # not `done += await ...`
                done += ok
                number += self.args.concurrency

        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(self.args.concurrency)))
        return {"transfers": done, "per_s": round(done / (time.monotonic() - started), 1)}

    async def open_loop(self, http, rate_per_s: float, vendors: list[str]) -> dict:
        """Payment i is due at start + i / rate, sent on time whatever the others do, for
        `--duration` seconds: transfers committed and per second, errors, latency from the due
        time (no coordinated omission), and the journal positions the window spans."""
        head_before = await self.head()
        interval, start, tasks = 1.0 / rate_per_s, time.monotonic(), []

        async def one(due: float, vendor: str) -> tuple[bool, float]:
            ok = await self.pay(http, vendor)
            return ok, time.monotonic() - due

        number = 0
        while (due := start + number * interval) < start + self.args.duration:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(due, vendors[number % len(vendors)])))
            number += 1
        results = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
        done = sum(ok for ok, _ in results)
        latencies = sorted(seconds for _, seconds in results)
        return {"transfers": done, "per_s": round(done / elapsed, 1), "offered_per_s": round(rate_per_s, 1),
                "errors": len(results) - done, "latency_p50_ms": round(_quantile(latencies, 0.50) * 1000, 1),
                "latency_p99_ms": round(_quantile(latencies, 0.99) * 1000, 1),
                "positions": (head_before, await self.head())}

    async def head(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as conn:
            return (await (await conn.execute("SELECT position FROM journal_head WHERE id = 1")).fetchone())[0]

    async def start_webhooks(self, http, receiver_port: int) -> None:
        for vendor, path in zip(self.vendors[:2], ("ok", "fail")):
            await self.post(http, f"/v1/vendors/{vendor}/webhooks", {"url": f"http://127.0.0.1:{receiver_port}/{path}"})
        # The worker starts at the head: the baseline's entries are history, not part of this run.
        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as conn:
            await conn.execute("INSERT INTO webhook_checkpoint (name, position) SELECT 'main', position FROM journal_head"
                               " WHERE id = 1")
        self.worker = self.spawn("webhooks", [sys.executable, "-m", "cli", "webhooks"])

    async def worker_ready(self, http, arrivals: Path) -> float:
        """Seconds until a probe payment reached the healthy receiver: the worker is up (imports,
        pool, NATS consumer), so the latency window measures a running worker, not its start."""
        started = time.monotonic()
        head = await self.head()
        if not await self.pay(http, self.vendors[0]):  # vendor A's is the healthy receiver
            raise RuntimeError("the probe payment failed")
        while not _latencies(arrivals, head, head + 1_000_000):
            if time.monotonic() - started > READY_S_MAX:
                raise RuntimeError("the webhook worker did not deliver the probe")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def backlog(self) -> dict:
        """What the worker has not done yet: journal entries its mapper has not reached, and
        delivery rows never attempted (a backlog at the end of a phase is CPU it deferred)."""
        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as conn:
            behind = await _not_mapped(conn)
            unattempted = await (await conn.execute(
                "SELECT e.url, count(*) FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
                " WHERE d.status = 'pending' AND d.attempts = 0 GROUP BY e.url")).fetchall()
        return {"entries_not_mapped": behind,
                "deliveries_not_attempted": {url.rsplit("/", 1)[1]: count for url, count in unattempted}}

    def pause_worker(self) -> None:
        """Stop the worker (SIGTERM, as a deployment would): no CPU for webhooks. Not SIGSTOP: a
        process frozen for longer than the lease (30 s) finds its rows claimed again when it
        wakes up, and sends them twice (at least once, but not what a running worker costs)."""
        self.children.remove(self.worker)
        self.worker.terminate()
        self.worker.wait(20)
        del self.named["webhooks"]

    async def resume_worker(self) -> float:
        """Start the worker again, then wait until its checkpoint reached the head (it skips C's
        entries, which no endpoint wants): seconds it took."""
        self.worker = self.spawn("webhooks", [sys.executable, "-m", "cli", "webhooks"])
        started = time.monotonic()
        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as conn:
            while await _not_mapped(conn) > 0:
                if time.monotonic() - started > READY_S_MAX:
                    raise RuntimeError("the webhook worker did not catch up after its restart")
                await asyncio.sleep(0.05)
        return time.monotonic() - started

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


async def _not_mapped(conn) -> int:
    """Journal entries after the worker's checkpoint: what its mapper has not reached yet."""
    head = await store.journal_head(conn)
    return head.position - await ws.cursor(conn, webhook_worker.WORKER_NAME)


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
                                 "--out", str(arrivals)], cwd=REPO, start_new_session=True)
    bench.named["receiver"] = receiver.pid
    phases: dict[str, dict] = {}
    ready_s = None

    def arrived() -> int:
        return len(arrivals.read_text().splitlines()) if arrivals.exists() else 0

    async def measured(phase: str, work, *, webhooks_on: bool = False) -> dict:
        before, started, arrived_before = bench.cpu_s(), time.monotonic(), arrived()
        result = await work
        result["receiver_got"] = arrived() - arrived_before  # healthy receiver's requests in the phase
        seconds = time.monotonic() - started
        after = bench.cpu_s()
        if webhooks_on:
            result["backlog_at_end"] = await bench.backlog()
        result["cores_used"] = _cpu_used(before, after, seconds)
        result["cpu_us_per_transfer"] = {name: round((after[name] - before.get(name, 0.0)) * 1e6 / max(1, result["transfers"]))
                                         for name in after if name != "machine_busy"}
        phases[phase] = result
        return result

    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await bench.start(http)
            with_hooks, without_hooks = bench.vendors[:2], bench.vendors[2:]
            await bench.closed_loop(http, without_hooks)  # warm-up, not counted
            first = await measured("full-without-1", bench.closed_loop(http, without_hooks))
            await bench.start_webhooks(http, receiver_port)
            if not args.cold_start:
                ready_s = await bench.worker_ready(http, arrivals)
            rate = first["per_s"] * args.load_share
            half = await measured("half-with", bench.open_loop(http, rate, with_hooks), webhooks_on=True)
            start_at, end_at = half.pop("positions")
            expected = (end_at - start_at + 1) // 2  # every other payment goes to the healthy receiver's vendor
            deadline = time.monotonic() + DRAIN_S_MAX
            while len(latencies := _latencies(arrivals, start_at, end_at)) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            await measured("full-with-1", bench.closed_loop(http, with_hooks), webhooks_on=True)
            bench.pause_worker()
            await measured("full-without-2", bench.closed_loop(http, without_hooks))
            (await measured("half-without", bench.open_loop(http, rate, without_hooks))).pop("positions")
            resumed_s = await bench.resume_worker()
            await measured("full-with-2", bench.closed_loop(http, with_hooks), webhooks_on=True)
            bench.pause_worker()
            await measured("full-without-3", bench.closed_loop(http, without_hooks))
    finally:
        bench.stop()
        receiver.terminate()
        receiver.wait(10)
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)  # a run leaves up to a GB of database behind
    without = [phases[f"full-without-{n}"]["per_s"] for n in (1, 2, 3)]
    with_ = [phases[f"full-with-{n}"]["per_s"] for n in (1, 2)]
    events = sum(phases[f"full-with-{n}"]["transfers"] for n in (1, 2))
    worker_cpu = sum(phases[f"full-with-{n}"]["cpu_us_per_transfer"]["webhooks"] * phases[f"full-with-{n}"]["transfers"]
                     for n in (1, 2)) / max(1, events)
    return {
        "full_without_per_s": without,
        "full_with_per_s": with_,
        # each phase with webhooks against the mean of the two without around it, then overall
        "full_change_each": [round(w / ((a + b) / 2) - 1, 4) for w, a, b in zip(with_, without, without[1:])],
        "full_change": round(sum(with_) / len(with_) / (sum(without) / len(without)) - 1, 4),
        "half_offered_per_s": round(rate, 1),
        "half_with_per_s": phases["half-with"]["per_s"],
        "half_without_per_s": phases["half-without"]["per_s"],
        "half_change": round(phases["half-with"]["per_s"] / phases["half-without"]["per_s"] - 1, 4),
        "half_write_p99_ms": {"with": phases["half-with"]["latency_p99_ms"],
                              "without": phases["half-without"]["latency_p99_ms"]},
        "delivery_events_expected": expected,
        "delivery_events_delivered": len(latencies),
        "delivery_p50_ms": round(_quantile(latencies, 0.50) * 1000, 1) if latencies else None,
        "delivery_p99_ms": round(_quantile(latencies, 0.99) * 1000, 1) if latencies else None,
        "delivery_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "worker_cpu_us_per_event_full": round(worker_cpu),
        "worker_ready_s": None if ready_s is None else round(ready_s, 2),
        "worker_resumed_s": round(resumed_s, 2),
        "phases": phases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.webhook_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of each phase (default 15)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients (default 32)")
    parser.add_argument("--load-share", type=float, default=0.5, help="share of full throughput for the latency run")
    parser.add_argument("--cold-start", action="store_true",
                        help="open the first window with webhooks as the worker is spawned (its start-up counted in)")
    parser.add_argument("--data-dir", default=None, help="keep the databases and logs here (default: a temporary"
                        " directory, deleted at the end)")
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
