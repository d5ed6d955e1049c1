"""Proof latency and tree rebuild, on an embedded PostgreSQL of its own.

    python -m tools.proof_bench --entries 1000000 --samples 2000

Seeds `--entries` journal entries (`tools.seed.seed_journal`, bypassing the API), rebuilds the
Merkle tree from scratch in a child process (`proofs.follower.rebuild`: wall time and the child's
peak RSS), then times random inclusion proofs (random position, random size at or above it) and
consistency proofs (random pair of sizes) exactly as the API computes them (`tree.read_nodes`
on one connection, then the hashing), and prints p50/p99 in milliseconds. HTTP is not included.

Then, with `--write-entries N`, the follower under write load: N more entries appended without
the follower (entries/s), then N more with the follower running in a child process, sampling
its lag behind the journal head every `LAG_SAMPLE_S`. The writer is `seed_journal` (bulk COPY,
about 13,000 entries/s): a heavier stream than the API's, so the lag is an upper bound.

Then, with `--rounds 75,300`, the follower's CPU per entry when each round finds that many new
entries (a 50 ms poll at 1,500 and 6,000 transfers/s): the tree is reset and `--round-entries`
entries appended round by round; the follower's own CPU and its PostgreSQL backend's (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from ledger import db
from proofs import merkle
from proofs import follower, tree
from proofs import store as tree_store
from tools.bench import process_stat
from tools.embedded import EmbeddedPostgres, free_port
from tools.seed import seed_journal


LAG_SAMPLE_S = 0.1
CATCH_UP_TIMEOUT_S = 600


async def _rebuild(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await follower.rebuild(conn)


async def _follow(url: str) -> None:
    pool = db.make_pool(url, role=None, size_max=1)
    await pool.open(wait=True)
    try:
        await follower.TreeFollower(pool).run()
    finally:
        await pool.close()


def _lag(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        head, size = conn.execute(
            "SELECT (SELECT position FROM journal_head), (SELECT tree_size FROM merkle_state)").fetchone()
    return head - size


def _wait_caught_up(url: str) -> float:
    started = time.monotonic()
    while _lag(url) > 0:
        assert time.monotonic() - started < CATCH_UP_TIMEOUT_S, "the follower did not catch up"
        time.sleep(LAG_SAMPLE_S)
    return time.monotonic() - started


def write_load(url: str, entries: int, accounts: int) -> None:
    started = time.monotonic()
    asyncio.run(seed_journal(url, entries=entries, accounts=accounts))
    print(f"write load without the follower: {entries / (time.monotonic() - started):,.0f} entries/s", flush=True)
    child = subprocess.Popen([sys.executable, "-m", "tools.proof_bench", "--follow-only", url])
    try:
        _wait_caught_up(url)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(_lag(url))
                time.sleep(LAG_SAMPLE_S)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        asyncio.run(seed_journal(url, entries=entries, accounts=accounts))
        rate = entries / (time.monotonic() - started)
        done.set()
        sampler.join()
        tail_s = _wait_caught_up(url)
        print(f"write load with the follower: {rate:,.0f} entries/s; lag behind the head over {len(samples)}"
              f" samples: p50 {_percentile(samples, 0.5):,} p99 {_percentile(samples, 0.99):,} max {max(samples):,}"
              f" entries; caught up {tail_s:.1f} s after the load stopped", flush=True)
    finally:
        child.terminate()
        child.wait()


def rebuild_in_child(url: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a tree rebuild from scratch in a child process."""
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "tools.proof_bench", "--rebuild-only", url])
    _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return time.monotonic() - started, usage.ru_maxrss / 1024


async def proofs(url: str, size: int, samples: int) -> dict[str, list[float]]:
    rng = random.Random(7)
    timings: dict[str, list[float]] = {"inclusion": [], "consistency": []}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(samples):
            n = rng.randint(1, size)
            index = rng.randrange(n)
            started = time.perf_counter()
            nodes = await tree.read_nodes(conn, merkle.inclusion_keys(index, n), n)
            merkle.inclusion_proof(index, n, nodes)
            timings["inclusion"].append((time.perf_counter() - started) * 1000)
            old = rng.randint(1, n)
            started = time.perf_counter()
            nodes = await tree.read_nodes(conn, merkle.consistency_keys(old, n), n)
            merkle.consistency_proof(old, n, nodes)
            timings["consistency"].append((time.perf_counter() - started) * 1000)
    return timings


def _backend_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a local PostgreSQL backend process, from /proc."""
    stat = process_stat(pid)
    assert stat is not None, f"the backend {pid} is gone"
    return stat[1] / os.sysconf("SC_CLK_TCK")


async def round_cost(url: str, *, per_round: int, entries: int) -> tuple[float, float]:
    """CPU µs per entry of the follower appending `entries` entries in rounds of `per_round` (what
    a poll finds under write load): (this process, its PostgreSQL backend). Resets the tree first."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async with conn.transaction():
            await tree_store.reset_tree(conn)
        pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]
        cpu, backend = time.process_time(), _backend_cpu_s(pid)
        done, frontier = 0, None
        while done < entries:
            appended, frontier = await follower.append_page(conn, limit=min(per_round, entries - done), frontier=frontier)
            assert appended, "the journal is shorter than --round-entries"
            done += appended
        return (time.process_time() - cpu) / done * 1e6, (_backend_cpu_s(pid) - backend) / done * 1e6


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.proof_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--write-entries", type=int, default=0, help="entries per write-load phase (0: skip)")
    parser.add_argument("--rounds", default="", help="round sizes for the follower's CPU per entry, e.g. 75,300")
    parser.add_argument("--round-entries", type=int, default=30_000, help="entries appended per round-size measurement")
    parser.add_argument("--rebuild-only", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--follow-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rebuild_only:
        asyncio.run(_rebuild(args.rebuild_only))
        return 0
    if args.follow_only:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_follow(args.follow_only))
        return 0
    with tempfile.TemporaryDirectory(prefix="ledger-proof-bench-") as root:
        postgres = EmbeddedPostgres(data_dir=Path(root) / "pg", port=free_port())
        postgres.start()
        try:
            asyncio.run(db.migrate(postgres.url))
            started = time.monotonic()
            asyncio.run(seed_journal(postgres.url, entries=args.entries, accounts=args.accounts))
            print(f"seeded {args.entries:,} entries in {time.monotonic() - started:.1f} s", flush=True)
            wall_s, rss_mib = rebuild_in_child(postgres.url)
            print(f"tree rebuilt from scratch: {wall_s:.1f} s, {args.entries / wall_s:,.0f} leaves/s,"
                  f" peak RSS {rss_mib:.0f} MiB", flush=True)
            timings = asyncio.run(proofs(postgres.url, args.entries, args.samples))
            for kind, values in timings.items():
                print(f"{kind} proof (read O(log n) nodes + hash), {len(values)} samples:"
                      f" p50 {_percentile(values, 0.5):.2f} ms, p99 {_percentile(values, 0.99):.2f} ms", flush=True)
            if args.write_entries:
                write_load(postgres.url, args.write_entries, args.accounts)
            for per_round in (int(n) for n in args.rounds.split(",") if n):
                own, backend = asyncio.run(round_cost(postgres.url, per_round=per_round,
                                                      entries=min(args.round_entries, args.entries)))
                print(f"follower CPU, rounds of {per_round} entries: {own:.1f} µs per entry in the follower,"
                      f" {backend:.1f} µs in its PostgreSQL backend", flush=True)
        finally:
            postgres.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
