"""The API process alone, A/B: one stack, the API's code swapped between checkouts round by round.

`ledger bench` runs a whole stack per run, so two variants of the API are measured minutes apart.
This tool starts embedded PostgreSQL, NATS and one projector once, creates the bench's world, and
then runs *uniform* (closed loop, `tools.loadgen`) once per round, each round with a fresh API
process whose code comes from the next checkout given (`--checkout A --checkout B --rounds 2`
runs A B A B): the database, the broker and the load are the same for every variant, so only the
API differs. Per round it prints transfers/s and CPU µs per committed transfer of each process
group (`bench.cpu_us_per_transfer`: api, postgres, nats, projector and their sum, `server`), and
the API's over the load generator's: the generator does the same work per request whatever the
API's code, so when the machine slows down (another tenant, a throttled core) both rise and the
ratio compares variants across rounds better than the API's figure alone.

    python -m tools.api_bench --checkout /tmp/base --checkout . --rounds 2 [--duration 10] [--profile]

With `--profile`, py-spy samples the API of every round into `api-<round>-<variant>.txt` in the
run directory and the round prints its 12 hottest functions (self and inclusive).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from ledger import db
from webhooks import events as webhooks
from tools import bench
from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port


def _spawn_api(stack: bench.Stack, checkout: Path, port: int) -> subprocess.Popen:
    return bench._spawn(stack, "api", port, cwd=checkout, PYTHONPATH=str(checkout))


async def _run(args: argparse.Namespace) -> int:
    run_dir = Path(".ledger/api-bench") / time.strftime("run-%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    postgres = EmbeddedPostgres(data_dir=run_dir / "pg", port=free_port())
    nats = EmbeddedNats(data_dir=run_dir / "nats", port=free_port())
    postgres.start()
    nats.start()
    sampler = bench.Sampler()
    sampler.start()
    port = free_port()
    stack = bench.Stack(database_url=postgres.url, nats_url=nats.url, api_url=f"http://127.0.0.1:{port}",
                        run_dir=run_dir, postgres=postgres, nats=nats, webhook_key=webhooks.new_key())
    checkouts = [Path(c).resolve() for c in args.checkout]
    try:
        bench._watch_servers(sampler)
        await db.migrate(stack.database_url)
        stack.projector = bench._spawn(stack, "projector", free_port())
        sampler.watch("projector", stack.projector.pid)
        stack.api = _spawn_api(stack, checkouts[0], port)
        await bench._wait_ready(stack)
        world = await bench.create_world(stack, clients=20, wallets=200, vendors=20)
        world_path = run_dir / "world.json"
        world_path.write_bytes(msgspec.json.encode(world))
        bench._stop_process(stack.api)
        for index in range(args.rounds * len(checkouts)):
            variant = index % len(checkouts)
            stack.api = _spawn_api(stack, checkouts[variant], port)
            sampler.watch("api", stack.api.pid)
            await bench._wait_ready(stack)
            options = bench.Options(duration_s=args.duration, warmup_s=args.warmup, concurrency=args.concurrency,
                                    run_id=f"r{index}", world_path=world_path)
            raw = run_dir / f"api-{index}-{variant}.txt"
            phase = await bench.run_phase(stack, sampler, options, name=f"round-{index}", scenario="uniform",
                                          profile={"api": raw} if args.profile else None)
            sampler.unwatch("api")
            bench._stop_process(stack.api)
            per = bench.cpu_us_per_transfer(phase)
            print(f"round {index} {checkouts[variant]}: {phase.throughput_per_s:,.0f}/s errors {phase.error_count}"
                  f" | µs/transfer api {per.get('api', 0):.0f} postgres {per.get('postgres', 0):.0f}"
                  f" nats {per.get('nats', 0):.0f} projector {per.get('projector', 0):.0f}"
                  f" server {per.get('server', 0):.0f} | client {per.get('client', 0):.0f}"
                  f" api÷client {per.get('api', 0) / max(per.get('client', 0), 1):.2f}"
                  f" others {phase.cpu_cores.get('others', 0):.2f} cores"
                  f" | batch {phase.committer.get('batch_mean', 0):.1f}", flush=True)
            if args.profile and raw.is_file():
                spots = bench.hotspots(raw, shown=12)
                for kind in ("self", "inclusive"):
                    print(f"  {kind}: " + "; ".join(f"{share:.1f}% {frame}" for frame, share in spots[kind]))
    finally:
        bench._stop_process(stack.api)
        bench._stop_process(stack.projector)
        sampler.stop()
        nats.stop()
        postgres.stop()
        shutil.rmtree(run_dir / "pg", ignore_errors=True)
        shutil.rmtree(run_dir / "nats", ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.api_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", required=True, help="a checkout whose api/ and ledger/ to run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("LEDGER_LOG_FORMAT", "json")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
