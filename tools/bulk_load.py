"""The bench's bulk load generator: `POST /v1/batches` of N transfers, from a process of its own.

The twin of `tools.loadgen` for the bulk path (docs/bench.md, "The bulk path"): the same world,
the same closed and open loops (latency of an open loop from the request's due time), but each
request is one batch of `--batch` transfers from one client's wallets to random vendors, every
item with a unique key. It records per request when it was due, how long the answer took, the
HTTP status and how many of its items were answered 201; the item statuses are counted apart.

    python -m tools.bulk_load --world W --out O --batch 100 --mode independent --concurrency 16 --key-prefix P
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import aiohttp
import msgspec

from tools.loadgen import AMOUNT_MAX, MEASURING, STATUS_CLIENT_ERROR, STATUS_NOT_SENT, World

CONNECTIONS_MAX = 64  # an open loop's excess waits for a connection
IN_FLIGHT_MAX = 2_000  # batches an open loop may have in flight before it counts the rest as not sent
REQUEST_TIMEOUT_S = 60.0


class BulkRecords(msgspec.Struct):
    """One run's batch requests, column-wise; `due_s` relative to the measured window's start."""

    mode: str  # closed or open
    batch_mode: str  # independent or atomic
    batch: int
    concurrency: int
    rate_per_s: float  # batches a second (open loop)
    duration_s: float
    window_start_unix: float
    window_end_unix: float
    due_s: list[float]
    latency_s: list[float]
    status: list[int]  # HTTP status of the batch
    committed: list[int]  # items answered 201
    item_status: dict[str, int]  # every item's status in the window (HTTP status, for a failed batch)


class _ItemAnswer(msgspec.Struct):
    status: int


class _BatchAnswer(msgspec.Struct):
    items: list[_ItemAnswer]


_DECODER = msgspec.json.Decoder(_BatchAnswer)


class _Batches:
    """Pre-grouped wallets by owner: a batch holds one client's items only (ownership is per item)."""

    def __init__(self, world: World, *, batch: int, mode: str, key_prefix: str, seed: int) -> None:
        owners: dict[str, list[str]] = {}
        for wallet in world.wallets:
            owners.setdefault(wallet.token, []).append(wallet.account_id)
        self._owners = [({"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, wallets)
                        for token, wallets in owners.items()]
        self._vendors, self._currency = world.vendors, world.currency
        self._batch, self._mode, self._prefix = batch, mode, key_prefix
        self._random = random.Random(seed)
        self._count = 0

    def next(self) -> tuple[dict[str, str], bytes]:
        headers, wallets = self._random.choice(self._owners)
        choice, randint = self._random.choice, self._random.randint
        items = []
        for _ in range(self._batch):
            self._count += 1
            items.append({"type": "transfer", "idempotency_key": f"{self._prefix}-{self._count}",
                          "from_account_id": choice(wallets), "to_account_id": choice(self._vendors),
                          "amount": randint(1, AMOUNT_MAX), "currency": self._currency, "reference": "bench"})
        return headers, msgspec.json.encode({"mode": self._mode, "items": items})


class _Sink:
    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.origin, self.recording = 0.0, False
        self.due_s: list[float] = []
        self.latency_s: list[float] = []
        self.status: list[int] = []
        self.committed: list[int] = []
        self.item_status: dict[str, int] = {}

    def add(self, due: float, done: float, status: int, items: list[_ItemAnswer] | None) -> None:
        if not self.recording:
            return
        self.due_s.append(due - self.origin)
        self.latency_s.append(done - due)
        self.status.append(status)
        if items is None:
            self.committed.append(0)
            self.item_status[str(status)] = self.item_status.get(str(status), 0) + self.batch
            return
        committed = 0
        for item in items:
            committed += item.status == 201
            self.item_status[str(item.status)] = self.item_status.get(str(item.status), 0) + 1
        self.committed.append(committed)


async def _send(http: aiohttp.ClientSession, url: str, headers: dict, body: bytes) -> tuple[int, list | None]:
    try:
        async with http.post(url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                return response.status, None
            return 200, _DECODER.decode(payload).items
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return STATUS_CLIENT_ERROR, None


async def _closed_loop(http, url: str, batches: _Batches, sink: _Sink, *, concurrency: int, until: float) -> None:
    clock = time.perf_counter

    async def worker() -> None:
        while clock() < until:
            headers, body = batches.next()
            sent = clock()
            status, items = await _send(http, url, headers, body)
            sink.add(sent, clock(), status, items)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _open_loop(http, url: str, batches: _Batches, sink: _Sink, *, rate_per_s: float, start: float,
                     until: float) -> None:
    """Batch i is due at start + i/rate, each in its own task, charged from its due time."""
    clock = time.perf_counter
    in_flight: set[asyncio.Task] = set()

    async def one(due: float, headers: dict, body: bytes) -> None:
        status, items = await _send(http, url, headers, body)
        sink.add(due, clock(), status, items)

    index = 0
    while (due := start + index / rate_per_s) < until:
        if due > clock():
            await asyncio.sleep(due - clock())
        headers, body = batches.next()
        if len(in_flight) >= IN_FLIGHT_MAX:
            sink.add(due, due, STATUS_NOT_SENT, None)
        else:
            task = asyncio.create_task(one(due, headers, body))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        index += 1
    if in_flight:
        await asyncio.gather(*in_flight)


async def run(world: World, args: argparse.Namespace) -> BulkRecords:
    url = world.api_url.rstrip("/") + "/v1/batches"
    batches = _Batches(world, batch=args.batch, mode=args.mode, key_prefix=args.key_prefix, seed=args.seed)
    sink = _Sink(args.batch)
    loop_mode = "open" if args.rate > 0 else "closed"
    connector = aiohttp.TCPConnector(limit=CONNECTIONS_MAX if loop_mode == "open" else args.concurrency,
                                     ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as http:
        for recording, seconds in ((False, args.warmup), (True, args.duration)):
            if seconds <= 0:
                continue
            if recording:
                print(MEASURING, flush=True)
            start = time.perf_counter()
            sink.origin, sink.recording = start, recording
            wall_start = time.time()
            if loop_mode == "open":
                await _open_loop(http, url, batches, sink, rate_per_s=args.rate, start=start, until=start + seconds)
            else:
                await _closed_loop(http, url, batches, sink, concurrency=args.concurrency, until=start + seconds)
    return BulkRecords(
        mode=loop_mode, batch_mode=args.mode, batch=args.batch, concurrency=args.concurrency, rate_per_s=args.rate,
        duration_s=args.duration, window_start_unix=wall_start, window_end_unix=wall_start + args.duration,
        due_s=sink.due_s, latency_s=sink.latency_s, status=sink.status, committed=sink.committed,
        item_status=sink.item_status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bulk_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True, type=Path, help="the bench's world JSON")
    parser.add_argument("--out", required=True, type=Path, help="where to write the records (JSON)")
    parser.add_argument("--batch", type=int, default=100, help="transfers per batch")
    parser.add_argument("--mode", choices=["independent", "atomic"], default="independent")
    parser.add_argument("--concurrency", type=int, default=16, help="closed loop: batches in flight")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: batches per second (0: closed loop)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent first and not recorded")
    parser.add_argument("--key-prefix", required=True, help="makes every idempotency key of the run unique")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    assert args.batch >= 1 and args.concurrency >= 1 and args.duration > 0 and args.rate >= 0
    world = msgspec.json.decode(args.world.read_bytes(), type=World)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        records = runner.run(run(world, args))
    args.out.write_bytes(msgspec.json.encode(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
