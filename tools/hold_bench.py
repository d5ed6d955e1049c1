"""Holds on the write path, without HTTP: a hold-then-capture flow against plain payments on one
`Committer` in one run, and the expiry sweeper's lag under load.

Starts its own PostgreSQL, migrates it, creates wallets and vendors, funds the wallets, then for
each round:
- payments: `--concurrency` workers keep plain transfers outstanding for `--payments` payments;
- holds: the same workers place a hold and capture half of it, `--payments` times (two journal
  entries per flow, the capture a three-leg entry);
reported as payments/s and flows/s (and entries/s). Then, with transfers still flowing and the
expiry sweeper running (`ledger.sweeper`, every `--sweep-interval-ms`), it places `--expiring`
holds of `expires_in_s=1` over a few seconds until all are released, and reports the lag from
`expires_at` to the expire entry's `committed_at`: p50, p99, max.

    python -m tools.hold_bench [--payments 5000] [--concurrency 64] [--rounds 2] [--expiring 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from ledger import committer as committer_mod
from ledger import db, dialect, domain, store, sweeper
from tools.embedded import EmbeddedPostgres, free_port

ADMIN = uuid.UUID(int=1)
EXPIRY_WAIT_S_MAX = 120.0
PLACE_CHUNK = 50
PLACE_PAUSE_S = 0.1


def _command(key: str, source, target, amount: int, *, kind: str = "transfer", hold_id=None,
             expires_in_s: int = 0) -> domain.EntryCommand:
    return domain.EntryCommand(ADMIN, "admin", key, key.encode(), source, target, amount, "USD", key, {},
                                  kind=kind, hold_id=hold_id, expires_in_s=expires_in_s)


class Bench:
    def __init__(self, url: str, *, wallets: int, vendors: int, concurrency: int) -> None:
        self.url, self.concurrency = url, concurrency
        self.wallets = [uuid.uuid4() for _ in range(wallets)]
        self.vendors = [uuid.uuid4() for _ in range(vendors)]
        self.keys = 0

    def key(self) -> str:
        self.keys += 1
        return f"bench-{self.keys}"

    async def open(self) -> None:
        funding = uuid.uuid4()
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            async with conn.transaction():
                await store.insert_accounts(conn, [(funding, "system", "USD", "f")]
                                            + [(w, "wallet", "USD", "w") for w in self.wallets]
                                            + [(v, "vendor", "USD", "v") for v in self.vendors])
            await store.ensure_holding_account(conn, "USD")
        self.pool = db.make_pool(self.url, role=None, size_max=2, serializable=True, name="hold-bench")
        self.reads = db.make_pool(self.url, role=None, size_max=2, name="hold-bench-reads")
        await self.pool.open(wait=True)
        await self.reads.open(wait=True)
        self.committer = committer_mod.Committer(pool=self.pool, batch_max=256, queue_max=100_000,
                                                 batch_linger_ms=1.0, commit_retries_max=10,
                                                 sql_dialect=dialect.POSTGRESQL)
        self.committer.start()
        await asyncio.gather(*(self.committer.submit(_command(self.key(), funding, w, 10**12)) for w in self.wallets))

    async def close(self) -> None:
        await self.committer.stop()
        await self.pool.close()
        await self.reads.close()

    async def _run(self, count: int, flow) -> float:
        queue = iter(range(count))

        async def worker():
            for n in queue:
                await flow(n)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return count / (time.perf_counter() - started)

    async def payment(self, n: int) -> None:
        answer = await self.committer.submit(_command(self.key(), self.wallets[n % len(self.wallets)],
                                                      self.vendors[n % len(self.vendors)], 1 + n % 1000))
        assert answer.entry is not None, answer

    async def hold_and_capture(self, n: int) -> None:
        wallet, vendor, amount = self.wallets[n % len(self.wallets)], self.vendors[n % len(self.vendors)], 2 + n % 1000
        hold_id = uuid.uuid4()
        placed = await self.committer.submit(_command(self.key(), wallet, vendor, amount, kind="hold",
                                                      hold_id=hold_id, expires_in_s=3600))
        assert placed.entry is not None, placed
        captured = await self.committer.submit(_command(self.key(), wallet, vendor, amount // 2, kind="capture",
                                                        hold_id=hold_id))
        assert captured.entry is not None, captured

    async def expiry_lag(self, count: int, sweep_interval_s: float) -> list[float]:
        """With payments flowing and the sweeper running, place `count` holds expiring in 1 s, in
        chunks of PLACE_CHUNK every PLACE_PAUSE_S (so expiries fall at every phase of the sweep
        interval, not in one burst), and wait until all are expired."""
        hold_ids = [uuid.uuid4() for _ in range(count)]
        stop = asyncio.Event()

        async def load():
            n = 0
            while not stop.is_set():
                await self.payment(n)
                n += 1

        async def sweep():
            while not stop.is_set():
                await asyncio.sleep(sweep_interval_s)
                await sweeper.expire_due_holds(self.reads, self.committer, batch_max=500)

        tasks = [asyncio.create_task(load()) for _ in range(self.concurrency // 2)] + [asyncio.create_task(sweep())]
        deadline = time.monotonic() + EXPIRY_WAIT_S_MAX
        try:
            for start in range(0, count, PLACE_CHUNK):
                await asyncio.gather(*(
                    self.committer.submit(_command(self.key(), self.wallets[i % len(self.wallets)],
                                                   self.vendors[i % len(self.vendors)], 1, kind="hold",
                                                   hold_id=hold_ids[i], expires_in_s=1))
                    for i in range(start, min(count, start + PLACE_CHUNK))
                ))
                await asyncio.sleep(PLACE_PAUSE_S)
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                async with self.reads.connection() as conn:
                    lags = await store.expiry_lags_s(conn, hold_ids)
                if len(lags) == count:
                    return lags
            return lags
        finally:
            stop.set()
            await asyncio.gather(*tasks)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _bench(url: str, args) -> None:
    bench = Bench(url, wallets=args.wallets, vendors=args.vendors, concurrency=args.concurrency)
    await bench.open()
    try:
        for round_number in range(1, args.rounds + 1):
            payments = await bench._run(args.payments, bench.payment)
            flows = await bench._run(args.payments, bench.hold_and_capture)
            print(f"round {round_number}: plain payments {payments:,.0f}/s; hold-then-capture {flows:,.0f} flows/s"
                  f" ({2 * flows:,.0f} entries/s, {flows / payments:.0%} of the payment rate)", flush=True)
        lags = await bench.expiry_lag(args.expiring, args.sweep_interval_ms / 1000)
        print(f"expiry under load: {len(lags)} of {args.expiring} holds released; lag expires_at -> released"
              f" p50 {statistics.median(lags):.2f} s, p99 {_quantile(lags, 0.99):.2f} s, max {max(lags):.2f} s"
              f" (sweep every {args.sweep_interval_ms} ms, 500 per pass)", flush=True)
    finally:
        await bench.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.hold_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--wallets", type=int, default=200)
    parser.add_argument("--vendors", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--expiring", type=int, default=2_000)
    parser.add_argument("--sweep-interval-ms", type=int, default=1_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ledger-hold-bench-") as root:
        postgres = EmbeddedPostgres(data_dir=Path(root) / "pg", port=free_port())
        postgres.start()
        try:
            asyncio.run(db.migrate(postgres.url))
            asyncio.run(_bench(postgres.url, args))
        finally:
            postgres.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
