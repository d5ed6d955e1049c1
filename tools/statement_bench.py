"""Measure a statement page and a balance at a position on one busy account of a large journal.

Starts a dedicated PostgreSQL in a temporary directory, seeds it (`tools.seed`, through
`decide_batch`, so every posting carries its `balance_after`) with `--entries` entries of which
`--hot-share` of the payments go to one vendor account, runs ANALYZE, then times, on one
connection as the API's read pool does, `--queries` calls each of:
- `store.statement`: a page of `--page` entries of the hot account after a random position;
- `store.account_at_position`: the hot account's balance right after a random position;
- `store.account_as_of`: its balance as of a random moment of the seeded history.
Prints p50/p99 in milliseconds, and the query plans once, so the index use can be seen.

    python -m tools.statement_bench [--entries 1000000] [--hot-share 0.2] [--queries 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from ledger import db, store
from tools.embedded import EmbeddedPostgres, free_port
from tools.seed import seed_journal


def _percentile_ms(samples_s: list[float], share: float) -> float:
    ordered = sorted(samples_s)
    return 1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _timed(call, queries: int) -> list[float]:
    samples = []
    for _ in range(queries):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def measure(url: str, *, entries: int, hot_share: float, queries: int, page: int, accounts: int) -> dict:
    started = time.monotonic()
    seeded = await seed_journal(url, entries=entries, accounts=accounts, hot_share=hot_share)
    seed_s = time.monotonic() - started
    hot, cold = seeded.vendors[0], seeded.wallets[0]
    rng = random.Random(7)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("ANALYZE")
        head = (await store.journal_head(conn)).position
        hot_entries = (await (await conn.execute("SELECT count(*) FROM postings WHERE account_id = %s",
                                                 (hot,))).fetchone())[0]
        first, last = (await (await conn.execute("SELECT min(committed_at), max(committed_at) FROM journal")).fetchone())
        span_s = (last - first).total_seconds()

        async def statement(account=hot):
            await store.statement(conn, account, after=rng.randrange(head), limit=page, reference=None)

        async def at_position(account=hot):
            assert await store.account_at_position(conn, account, rng.randrange(head + 1)) is not None

        async def statement_cold():
            await statement(cold)

        async def at_position_cold():
            await at_position(cold)

        async def as_of():
            moment = first + (last - first) * rng.random()
            assert await store.account_as_of(conn, hot, moment) is not None

        for call in (statement, at_position, as_of):  # warm the cache as a running service would be
            await _timed(call, min(queries, 200))
        cold_entries = (await (await conn.execute("SELECT count(*) FROM postings WHERE account_id = %s",
                                                  (cold,))).fetchone())[0]
        calls = (("statement", statement), ("at_position", at_position), ("as_of", as_of),
                 ("statement_cold", statement_cold), ("at_position_cold", at_position_cold))
        results = {name: await _timed(call, queries) for name, call in calls}
        plans = {}
        # The plans of the store's own statements, for the hot and the cold account at mid-journal.
        for account, label in ((hot, "hot"), (cold, "cold")):
            for name, sql, params in (
                ("statement", *store.statement_query(account, after=head // 2, limit=page, reference=None)),
                ("at_position", store.ACCOUNT_AT_POSITION_SQL, {"id": account, "at": head // 2}),
            ):
                rows = await (await conn.execute("EXPLAIN " + sql, params)).fetchall()
                plans[f"{name} ({label})"] = [row[0] for row in rows]
    return {
        "entries": entries, "hot_account_entries": hot_entries, "cold_account_entries": cold_entries, "seed_s": round(seed_s, 1),
        "seed_entries_per_s": round(entries / seed_s), "history_span_s": round(span_s, 1),
        **{f"{name}_ms": {"p50": round(_percentile_ms(s, 0.5), 3), "p99": round(_percentile_ms(s, 0.99), 3),
                          "mean": round(1000 * statistics.fmean(s), 3)} for name, s in results.items()},
        "plans": plans,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.statement_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--hot-share", type=float, default=0.2, help="share of payments to the measured account")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=2000, help="timed calls of each kind")
    parser.add_argument("--page", type=int, default=100, help="statement page size")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ledger-statement-bench-") as root:
        postgres = EmbeddedPostgres(data_dir=Path(root) / "pg", port=free_port())
        postgres.start()
        try:
            asyncio.run(db.migrate(postgres.url))
            result = asyncio.run(measure(postgres.url, entries=args.entries, hot_share=args.hot_share,
                                         queries=args.queries, page=args.page, accounts=args.accounts))
        finally:
            postgres.stop()
    for name in ("statement", "at_position", "as_of", "statement_cold", "at_position_cold"):
        figures = result[f"{name}_ms"]
        print(f"{name:<12} p50 {figures['p50']:.3f} ms  p99 {figures['p99']:.3f} ms  mean {figures['mean']:.3f} ms")
    print(f"journal {result['entries']:,} entries, hot account {result['hot_account_entries']:,} entries,"
          f" cold account {result['cold_account_entries']:,};"
          f" seeded in {result['seed_s']} s ({result['seed_entries_per_s']:,} entries/s)")
    for name, plan in result["plans"].items():
        print(f"plan of {name}:\n  " + "\n  ".join(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
