"""The write path alone, without HTTP: how fast one `Committer` commits payments, so a change to
the batch (a column, a table, a statement) can be compared before and after on a loaded machine.

Starts its own PostgreSQL, migrates it, creates a funding system account, `--wallets` wallets and
`--vendors` vendors, funds the wallets, then keeps `--concurrency` payments outstanding for
`--payments` payments and reports payments/s and the mean batch transaction time (the
committer's own histogram). The same script runs against another checkout's code with
`PYTHONPATH=<that checkout>` (the module only uses what both sides have), which is how the
balance_after / refund_totals change was measured against main.

    python -m tools.commit_bench [--payments 20000] [--concurrency 128] [--rounds 3]
    python -m tools.commit_bench --code /tmp/main,. [--pairs 3]   # an A/B on one server, alternated

With `--code A,B` the rounds run in child processes, each with one checkout first on its path
(`PYTHONPATH`), in the order A B B A A B ... on one PostgreSQL, and each round also reports the
CPU per payment of the committing process and of PostgreSQL (every backend, from /proc): CPU
time is much less at the mercy of other tenants than payments/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

from ledger import committer as committer_mod
from ledger import db, dialect, domain, metrics, store
from tools.embedded import EmbeddedPostgres, free_port

ADMIN = uuid.UUID(int=1)


def _command(n: int, source: uuid.UUID, target: uuid.UUID, amount: int,
             metadata: dict[str, str] | None = None) -> domain.EntryCommand:
    return domain.EntryCommand(ADMIN, "admin", f"bench-{n}", n.to_bytes(8, "big"), source, target, amount, "USD",
                                  "", metadata or {})


async def _one_round(url: str, *, payments: int, concurrency: int, wallets: int, vendors: int,
                     metadata_of: Callable[[int], dict[str, str]] | None = None) -> tuple[float, float]:
    """`metadata_of(n)`: payment n's metadata (none by default; the search bench's order ids)."""
    funding = uuid.uuid4()
    wallet_ids = [uuid.uuid4() for _ in range(wallets)]
    vendor_ids = [uuid.uuid4() for _ in range(vendors)]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async with conn.transaction():
            await store.insert_accounts(conn, [(funding, "system", "USD", "f")]
                                        + [(w, "wallet", "USD", "w") for w in wallet_ids]
                                        + [(v, "vendor", "USD", "v") for v in vendor_ids])
    pool = db.make_pool(url, role=None, size_max=2, serializable=True, name="commit-bench")
    await pool.open(wait=True)
    committer = committer_mod.Committer(pool=pool, batch_max=256, queue_max=10_000, batch_linger_ms=1.0,
                                        commit_retries_max=10, sql_dialect=dialect.POSTGRESQL)
    committer.start()
    try:
        base = uuid.uuid4().int % 10**12 * 1000
        await asyncio.gather(*(committer.submit(_command(base + i, funding, w, 10**9))
                               for i, w in enumerate(wallet_ids)))
        seconds_before = metrics.COMMIT_SECONDS._sum.get()
        batches_before = sum(s.value for s in metrics.COMMIT_SECONDS.collect()[0].samples if s.name.endswith("_count"))
        queue = iter(range(payments))

        async def worker():
            for n in queue:
                answer = await committer.submit(_command(base + wallets + n, wallet_ids[n % wallets],
                                                         vendor_ids[n % vendors], 1 + n % 1000,
                                                         metadata_of(base + n) if metadata_of else None))
                assert answer.entry is not None, answer

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall_s = time.perf_counter() - started
        batches = sum(s.value for s in metrics.COMMIT_SECONDS.collect()[0].samples if s.name.endswith("_count"))
        batch_ms = 1000 * (metrics.COMMIT_SECONDS._sum.get() - seconds_before) / max(1, batches - batches_before)
        return payments / wall_s, batch_ms
    finally:
        await committer.stop()
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.commit_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--wallets", type=int, default=200)
    parser.add_argument("--vendors", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="a migrated database to use instead of starting one (one round, JSON out)")
    parser.add_argument("--code", help="A,B: two checkouts to alternate, each round in a child process")
    parser.add_argument("--pairs", type=int, default=3, help="with --code: rounds of each side")
    args = parser.parse_args(argv)
    if args.url:
        cpu_started = time.process_time()  # the round's setup (accounts, funding) included
        rate, batch_ms = asyncio.run(_one_round(args.url, payments=args.payments, concurrency=args.concurrency,
                                                wallets=args.wallets, vendors=args.vendors))
        cpu_us = (time.process_time() - cpu_started) / args.payments * 1e6
        print(json.dumps({"rate": rate, "batch_ms": batch_ms, "cpu_us": cpu_us}), flush=True)
        return 0
    if args.code:
        return _alternate(args)
    with tempfile.TemporaryDirectory(prefix="ledger-commit-bench-") as root:
        postgres = EmbeddedPostgres(data_dir=Path(root) / "pg", port=free_port())
        postgres.start()
        try:
            asyncio.run(db.migrate(postgres.url))
            for round_number in range(1, args.rounds + 1):
                rate, batch_ms = asyncio.run(_one_round(postgres.url, payments=args.payments,
                                                        concurrency=args.concurrency, wallets=args.wallets,
                                                        vendors=args.vendors))
                print(f"round {round_number}: {rate:,.0f} payments/s, mean batch transaction {batch_ms:.2f} ms",
                      flush=True)
        finally:
            postgres.stop()
    return 0


def _alternate(args) -> int:
    """Rounds of checkouts A and B in child processes on one PostgreSQL, A B B A A B ..."""
    from tools.audit_bench import postgres_cpu_s

    sides = dict(zip("AB", (str(Path(code).absolute()) for code in args.code.split(","))))
    results: dict[str, list[tuple[float, float, float, float]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="ledger-commit-bench-") as root:
        postgres = EmbeddedPostgres(data_dir=Path(root) / "pg", port=free_port())
        postgres.start()
        try:
            asyncio.run(db.migrate(postgres.url))
            for pair in range(args.pairs):
                for side in ("A", "B") if pair % 2 == 0 else ("B", "A"):
                    pg_before = postgres_cpu_s(postgres._proc.pid)
                    child = subprocess.run(
                        [sys.executable, str(Path(__file__).absolute()), "--url", postgres.url,
                         "--payments", str(args.payments), "--concurrency", str(args.concurrency)],
                        env={**os.environ, "PYTHONPATH": sides[side]}, cwd=sides[side], check=True,
                        stdout=subprocess.PIPE).stdout
                    one = json.loads(child.decode().strip().splitlines()[-1])
                    pg_us = (postgres_cpu_s(postgres._proc.pid) - pg_before) / args.payments * 1e6
                    results[side].append((one["rate"], one["batch_ms"], one["cpu_us"], pg_us))
                    print(f"{side}{pair + 1}: {one['rate']:,.0f} payments/s, batch {one['batch_ms']:.1f} ms,"
                          f" committer process CPU {one['cpu_us']:.0f} µs/payment, postgres CPU {pg_us:.0f} µs/payment", flush=True)
        finally:
            postgres.stop()
    mean = {side: [sum(column) / len(column) for column in zip(*rows)] for side, rows in results.items()}
    names = ("payments/s", "batch ms", "committer process CPU µs", "postgres CPU µs (each with the round's setup)")
    print("B ÷ A: " + "; ".join(f"{name} {mean['A'][i]:,.1f} → {mean['B'][i]:,.1f} ({mean['B'][i] / mean['A'][i]:.3f})"
                                for i, name in enumerate(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
