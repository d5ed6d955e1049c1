"""The benchmark's load generator: `POST /v1/transfers` from a process of its own.

`ledger bench` runs it as a subprocess (`python -m tools.loadgen ...`) so that the client's CPU
is not the API's and its event loop never delays the server's. It reads the bench's world (client
tokens with their wallets, vendor accounts) from a JSON file, sends for a fixed time, and writes
one record per request to a JSON file: when it was due, how long its answer took, its status.

Two ways to send:
- closed loop (`--concurrency C`): C workers, each sends its next request as soon as the previous
  one is answered. This finds the maximum throughput; latency is measured from the actual send.
- open loop (`--rate R`): requests are due at fixed intervals of 1/R s whatever the server does,
  and latency is measured from the time a request was *due*, not from when it could be sent. A
  server that stalls for 100 ms is then charged for every request that should have gone out in
  those 100 ms (no coordinated omission, as wrk2 and HdrHistogram's docs explain).

Every request has a unique idempotency key and a small amount, so every one should be a 201.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec

CONNECTIONS_MAX = 256  # the client's connection pool; an open loop's excess waits for a connection
IN_FLIGHT_MAX = 20_000  # an open loop that far behind stops scheduling (each one counted as an error)
REQUEST_TIMEOUT_S = 30.0
AMOUNT_MAX = 1000  # minor units; the bench funds every wallet with far more than a run can spend
HOT_SHARE = 0.9  # the hot-vendor scenario sends this share of its payments to vendor 0
STATUS_NOT_SENT = -1  # the open loop was too far behind to even schedule it
STATUS_CLIENT_ERROR = 0  # connection refused or reset, timeout: no HTTP answer
MEASURING = "measuring"  # printed on stdout when the recorded window starts


class Wallet(msgspec.Struct):
    token: str
    account_id: str


class World(msgspec.Struct):
    """What the bench created through the API; written by ledger.bench, read here."""

    api_url: str
    currency: str
    wallets: list[Wallet]
    vendors: list[str]


class Records(msgspec.Struct):
    """One run's requests, column-wise. `due_s` is relative to the measured window's start."""

    scenario: str
    mode: str
    concurrency: int
    rate_per_s: float
    duration_s: float
    window_start_unix: float  # wall clock of due_s == 0, to match the journal's committed_at
    window_end_unix: float
    due_s: list[float]
    latency_s: list[float]
    status: list[int]


@dataclass
class _Sink:
    """Collects records of the measured window; the warm-up's are dropped."""

    origin: float = 0.0
    recording: bool = False

    def __post_init__(self) -> None:
        self.due_s: list[float] = []
        self.latency_s: list[float] = []
        self.status: list[int] = []

    def add(self, due: float, done: float, status: int) -> None:
        if self.recording:
            self.due_s.append(due - self.origin)
            self.latency_s.append(done - due)
            self.status.append(status)


class _Payments:
    """Pre-built request parts, so the generator spends its CPU on sending, not formatting."""

    def __init__(self, world: World, *, scenario: str, key_prefix: str, seed: int) -> None:
        self._random = random.Random(seed)
        self._wallets = [
            ({"Authorization": f"Bearer {w.token}", "Content-Type": "application/json"}, w.account_id)
            for w in world.wallets
        ]
        self._vendors = world.vendors
        self._hot = scenario == "hot"
        self._currency = world.currency
        self._prefix = key_prefix
        self._count = 0

    def next(self) -> tuple[dict[str, str], bytes]:
        base, wallet = self._random.choice(self._wallets)
        if self._hot and self._random.random() < HOT_SHARE:
            vendor = self._vendors[0]
        else:
            vendor = self._random.choice(self._vendors)
        self._count += 1
        headers = dict(base)
        headers["Idempotency-Key"] = f"{self._prefix}-{self._count}"
        body = (
            f'{{"from_account_id":"{wallet}","to_account_id":"{vendor}",'
            f'"amount":{self._random.randint(1, AMOUNT_MAX)},"currency":"{self._currency}","reference":"bench"}}'
        )
        return headers, body.encode()


async def _send(http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes) -> int:
    try:
        async with http.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return STATUS_CLIENT_ERROR


async def _closed_loop(http, url: str, payments: _Payments, sink: _Sink, *, concurrency: int, until: float) -> None:
    clock = time.perf_counter

    async def worker() -> None:
        while clock() < until:
            headers, body = payments.next()
            sent = clock()
            status = await _send(http, url, headers, body)
            sink.add(sent, clock(), status)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _open_loop(http, url: str, payments: _Payments, sink: _Sink, *, rate_per_s: float, start: float,
                     until: float) -> None:
    """Send request i at start + i/rate. Each is its own task, so a slow answer delays nothing else;
    after a late wake-up every request already due goes out at once, each charged from its due time."""
    clock = time.perf_counter
    interval = 1.0 / rate_per_s
    in_flight: set[asyncio.Task] = set()

    async def one(due: float, headers: dict[str, str], body: bytes) -> None:
        status = await _send(http, url, headers, body)
        sink.add(due, clock(), status)

    index = 0
    while True:
        due = start + index * interval
        if due >= until:
            break
        now = clock()
        if due > now:
            await asyncio.sleep(due - now)
        headers, body = payments.next()
        if len(in_flight) >= IN_FLIGHT_MAX:
            sink.add(due, due, STATUS_NOT_SENT)
        else:
            task = asyncio.create_task(one(due, headers, body))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        index += 1
    if in_flight:
        await asyncio.gather(*in_flight)


async def run(world: World, *, scenario: str, concurrency: int, rate_per_s: float, duration_s: float,
              warmup_s: float, key_prefix: str, seed: int) -> Records:
    url = world.api_url.rstrip("/") + "/v1/transfers"
    payments = _Payments(world, scenario=scenario, key_prefix=key_prefix, seed=seed)
    sink = _Sink()
    mode = "open" if rate_per_s > 0 else "closed"
    connector = aiohttp.TCPConnector(limit=CONNECTIONS_MAX if mode == "open" else concurrency, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as http:
        for recording, seconds in ((False, warmup_s), (True, duration_s)):
            if seconds <= 0:
                continue
            if recording:
                print(MEASURING, flush=True)  # the bench starts counting CPU now
            start = time.perf_counter()
            sink.origin, sink.recording = start, recording
            wall_start = time.time()
            if mode == "open":
                await _open_loop(http, url, payments, sink, rate_per_s=rate_per_s, start=start, until=start + seconds)
            else:
                await _closed_loop(http, url, payments, sink, concurrency=concurrency, until=start + seconds)
    return Records(
        scenario=scenario, mode=mode, concurrency=concurrency, rate_per_s=rate_per_s, duration_s=duration_s,
        window_start_unix=wall_start, window_end_unix=wall_start + duration_s,
        due_s=sink.due_s, latency_s=sink.latency_s, status=sink.status,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True, type=Path, help="the bench's world JSON")
    parser.add_argument("--out", required=True, type=Path, help="where to write the records (JSON)")
    parser.add_argument("--scenario", choices=["uniform", "hot"], default="uniform")
    parser.add_argument("--concurrency", type=int, default=64, help="closed loop: workers")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: requests per second (0: closed loop)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent first and not recorded")
    parser.add_argument("--key-prefix", required=True, help="makes every idempotency key of the run unique")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    assert args.concurrency >= 1 and args.duration > 0 and args.rate >= 0
    world = msgspec.json.decode(args.world.read_bytes(), type=World)
    assert world.wallets and world.vendors, "the world has no wallets or no vendors"
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        records = runner.run(run(
            world, scenario=args.scenario, concurrency=args.concurrency, rate_per_s=args.rate,
            duration_s=args.duration, warmup_s=args.warmup, key_prefix=args.key_prefix, seed=args.seed,
        ))
    args.out.write_bytes(msgspec.json.encode(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
