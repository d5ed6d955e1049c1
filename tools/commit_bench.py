"""The write path alone, without HTTP: how fast one `Committer` commits payments, so a change to
the batch (a column, a table, a statement) can be compared before and after on a loaded machine.

Starts its own PostgreSQL, migrates it, creates a funding system account, `--wallets` wallets and
`--vendors` vendors, funds the wallets, then keeps `--concurrency` payments outstanding for
`--payments` payments and reports payments/s and the mean batch transaction time (the
committer's own histogram). The same script runs against another checkout's code with
`PYTHONPATH=<that checkout>` (the module only uses what both sides have), which is how the
balance_after / refund_totals change was measured against main.

    python -m tools.commit_bench [--payments 20000] [--concurrency 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
