"""The floor under the API: what HTTP alone costs on this machine, measured like `ledger bench`.

A server that does nothing but what every transfer request needs from aiohttp (uvloop, the
request read and decoded with msgspec, a transfer-sized JSON answer with 201, `gc.freeze` after
start as the API does) is driven by the bench's own load generator (`tools.loadgen`, closed loop)
on loopback. It prints requests/s and the server's CPU µs per request in the measured window.

Issue 16 asks the whole service for ≤ 1.0× PostgreSQL's CPU per pgbench transaction (200–241 µs
here) and ≥ 1.5× pgbench's throughput. This is the part of that budget that no ledger logic can
get under in this stack: compare it with the API's figure in `ledger bench`.

    python -m tools.http_floor [--duration 10] [--concurrency 128]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

from tools.bench import _CLOCK_TICKS_PER_S, _stop_process, process_stat
from tools.embedded import free_port
from tools.loadgen import MEASURING

START_S_MAX = 10.0  # the server answers within this, or the run stops
# An answer the size of a transfer's: the fields of a journal entry with plausible values.
_ANSWER = msgspec.json.encode({
    "transfer_id": str(uuid.uuid4()), "position": 123_456, "from_account_id": str(uuid.uuid4()),
    "to_account_id": str(uuid.uuid4()), "amount": 100, "currency": "EUR", "reference": "order-0000000000001",
    "kind": "payment", "committed_at": "2026-12-07T14:00:00.000000Z", "hash": "ab" * 32, "prev_hash": "cd" * 32,
    "metadata": {},
})


def serve(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def transfer(request: web.Request) -> web.Response:
        msgspec.json.decode(await request.read())
        return web.Response(body=_ANSWER, status=201, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/transfers", transfer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        gc.freeze()
        await asyncio.Event().wait()

    uvloop.run(main())


def _world(url: str) -> dict:
    return {"api_url": url, "currency": "EUR", "vendors": [str(uuid.uuid4()) for _ in range(20)],
            "wallets": [{"token": "x", "account_id": str(uuid.uuid4())} for _ in range(200)]}


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + START_S_MAX
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the floor server did not listen on {port} within {START_S_MAX:g} s")


def measure(*, duration_s: float, concurrency: int) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="http-floor-") as tmp:
        world, out = Path(tmp) / "world.json", Path(tmp) / "records.json"
        world.write_text(json.dumps(_world(f"http://127.0.0.1:{port}")))
        server = subprocess.Popen([sys.executable, "-m", "tools.http_floor", "--serve", str(port)])
        try:
            _wait_listening(port)
            client = subprocess.Popen(
                [sys.executable, "-m", "tools.loadgen", "--world", str(world), "--out", str(out),
                 "--concurrency", str(concurrency), "--duration", str(duration_s), "--warmup", "1",
                 "--key-prefix", uuid.uuid4().hex],
                stdout=subprocess.PIPE, text=True)
            assert client.stdout is not None
            for line in client.stdout:
                if line.strip() == MEASURING:
                    break
            started, ticks_before = time.monotonic(), process_stat(server.pid)[1]
            client.stdout.read()
            client.wait()
            elapsed_s, ticks = time.monotonic() - started, process_stat(server.pid)[1] - ticks_before
        finally:
            _stop_process(server)
        records = msgspec.json.decode(out.read_bytes())
    answered = sum(1 for status in records["status"] if status == 201)
    rate = answered / records["duration_s"]
    server_cores = ticks / _CLOCK_TICKS_PER_S / elapsed_s
    return {"requests_per_s": round(rate), "errors": len(records["status"]) - answered,
            "server_cpu_us_per_request": round(server_cores / rate * 1e6, 1) if rate else None,
            "server_cores": round(server_cores, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.http_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    print(json.dumps(measure(duration_s=args.duration, concurrency=args.concurrency)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
