"""Measure searches by metadata on a large journal, and what the metadata index costs the write path.

Starts a dedicated PostgreSQL in a temporary directory, seeds it (`tools.seed`) with `--entries`
entries of which `--hot-share` of the payments go to one vendor account (0.2 of 1,000,000 entries:
100,000 on it), every payment carrying `{"order_id": "order-N", "channel": "web"|"app"}`, replays
the projection (the vendor list reads it), runs ANALYZE, then times, on one connection as the
API's read pool does, `--queries` calls of each search through the store, as the routes make them:
- statement: `GET /v1/accounts/{hot}/entries?metadata.order_id=...`;
- vendor list: `GET /v1/vendors/{hot}/transfers?metadata.order_id=...`;
- transfers: `GET /v1/transfers?metadata.order_id=...` (and with `account_id={hot}`);
each for an order id of a payment to the hot account (a match: exactly one entry) and for one that
no entry has (no match), then again with `kind=transfer&from=...&to=...` (a one-second window around
the entry). Also, for what the note says about them: the first page of a filter that half the
journal matches (`channel=web`), and a `kind` no entry has (`refund`). Prints p50/p99 in
milliseconds and the query plans once.

With `--write-ab`, instead: the write path alone (`tools.commit_bench`, payments carrying an order
id and a channel) with and without the metadata index, alternated round by round on one database,
so the index's cost per payment can be read beside the noise.

    python -m tools.search_bench [--entries 1000000] [--hot-share 0.2] [--queries 1000]
    python -m tools.search_bench --write-ab [--payments 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from ledger import config, db, dialect, store
from ledger.store import EntryFilter
from projector import consumer, store as projections
from tools.embedded import EmbeddedPostgres, free_port
from tools.seed import hot_payment, seed_journal
from tools.statement_bench import _percentile_ms, _timed

P99_MS_MAX = 10.0  # issue 26: a search's p99 in a journal of 1,000,000 entries
PAGE = 100
WINDOW = dt.timedelta(seconds=1)  # the from/to window around a matched entry's committed_at
SAMPLE_ORDERS = 2000  # order ids of hot payments the match searches pick from


def order_metadata(n: int) -> dict[str, str]:
    return {"order_id": f"order-{n}", "channel": "web" if n % 2 == 0 else "app"}


async def _hot_orders(conn, hot_share: float, payments: int) -> list[tuple[str, dt.datetime]]:
    """(order id, committed_at) of up to SAMPLE_ORDERS payments to the hot account: payment n is
    entry 2n + 2 of the freshly seeded journal."""
    rng = random.Random(11)
    hot = [n for n in range(payments) if hot_payment(n, hot_share)]
    picked = sorted(rng.sample(hot, min(SAMPLE_ORDERS, len(hot))))
    entries = await store.entries_by_positions(conn, [2 * n + 2 for n in picked])
    return [(e.metadata["order_id"], dt.datetime.fromisoformat(e.committed_at)) for e in entries]


def _searches(conn, hot, orders: list[tuple[str, dt.datetime]]) -> dict:
    """name -> (an async call running one search, the number of items it must find)."""
    rng = random.Random(13)
    absent = iter(range(10**9))

    def match(timed: bool) -> EntryFilter:
        order, at = rng.choice(orders)
        return _filter(order, at if timed else None)

    def no_match(timed: bool) -> EntryFilter:
        return _filter(f"absent-{next(absent)}", rng.choice(orders)[1] if timed else None)

    routes = {
        "statement": lambda f: store.statement_search(conn, hot, f, after=0, limit=PAGE),
        "vendor_list": lambda f: _vendor_page(conn, hot, f),
        "transfers": lambda f: store.search_entries(conn, f, account_id=None, after=0, limit=PAGE),
        "transfers_account": lambda f: store.search_entries(conn, f, account_id=hot, after=0, limit=PAGE),
    }
    cases = {}
    for route, search in routes.items():
        for timed, suffix in ((False, ""), (True, "+kind+time")):
            cases[f"{route} match{suffix}"] = (_call(search, lambda t=timed: match(t)), 1)
            cases[f"{route} no match{suffix}"] = (_call(search, lambda t=timed: no_match(t)), 0)
    cases["statement channel=web (half the journal)"] = (
        _call(routes["statement"], lambda: EntryFilter(metadata={"channel": "web"})), PAGE)
    cases["statement kind=refund (none)"] = (_call(routes["statement"], lambda: EntryFilter(kind="refund")), 0)
    cases["transfers kind=refund (none)"] = (_call(routes["transfers"], lambda: EntryFilter(kind="refund")), 0)
    return cases


def _filter(order: str, at: dt.datetime | None) -> EntryFilter:
    if at is None:
        return EntryFilter(metadata={"order_id": order})
    return EntryFilter(metadata={"order_id": order}, kind="transfer", since=at - WINDOW, until=at + WINDOW)


async def _vendor_page(conn, vendor, entry_filter: EntryFilter) -> list:
    _, page = await projections.verifications_page(conn, vendor, after=0, limit=PAGE, entry_filter=entry_filter)
    return page


def _call(search, make_filter):
    """One timed call: a fresh filter each time; the count found is checked after timing."""
    found = []

    async def call():
        found.append(len(await search(make_filter())))

    call.found = found
    return call


async def _plans(conn, hot, orders) -> dict[str, list[str]]:
    order, at = orders[len(orders) // 2]
    plans = {}
    for label, entry_filter in (("match", _filter(order, None)), ("no match", _filter("absent", None)),
                                ("match+kind+time", _filter(order, at))):
        positions = await store.positions_of(conn, entry_filter)
        statement = store.statement_search_query(hot, entry_filter, after=0, limit=PAGE, reference=None,
                                                 positions=positions)
        entries = store.entries_search_query(entry_filter, after=0, limit=PAGE, positions=positions)
        for name, (sql, args) in (("statement", statement), ("transfers", entries)):
            rows = await (await conn.execute("EXPLAIN " + sql, args)).fetchall()
            plans[f"{name} {label}"] = [row[0] for row in rows]
    return plans


async def measure(url: str, *, entries: int, hot_share: float, queries: int, accounts: int) -> dict:
    started = time.monotonic()
    seeded = await seed_journal(url, entries=entries, accounts=accounts, hot_share=hot_share,
                                payment_metadata=order_metadata)
    seed_s = time.monotonic() - started
    started = time.monotonic()
    await consumer.rebuild_at(config.Settings().replace(database={"url": url}))
    replay_s = time.monotonic() - started
    hot = seeded.vendors[0]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE")
        orders = await _hot_orders(conn, hot_share, entries // 2)
        cases = _searches(conn, hot, orders)
        for call, _ in cases.values():  # warm the cache as a running service would be
            await _timed(call, min(queries, 100))
        results = {}
        for name, (call, expected) in cases.items():
            call.found.clear()
            results[name] = await _timed(call, queries)
            assert set(call.found) == {expected}, f"{name}: found {sorted(set(call.found))}, expected {expected}"
        plans = await _plans(conn, hot, orders)
    return {
        "entries": entries, "hot_share": hot_share, "seed_s": round(seed_s, 1), "projection_replay_s": round(replay_s, 1),
        "searches_ms": {name: {"p50": round(_percentile_ms(s, 0.5), 3), "p99": round(_percentile_ms(s, 0.99), 3)}
                        for name, s in results.items()},
        "plans": plans,
    }


# The metadata index's forms the write A/B compares: none, the one migrations create, and GIN's
# default pending list (kept small, since every search scans it).
INDEX_VARIANTS = {
    "without the index": None,
    "with the index (fastupdate off)": dialect.POSTGRESQL.metadata_index_ddl(),
    "with the index (fastupdate on, 256 kB pending list)": dialect.POSTGRESQL.metadata_index_ddl().replace(
        "fastupdate = off", "fastupdate = on, gin_pending_list_limit = 256"),
}


async def write_ab(url: str, *, payments: int, rounds: int) -> list[dict]:
    """Rounds of the write path with each form of the metadata index, in an order that turns
    round by round, so drift of the machine falls on every form alike."""
    from tools import commit_bench

    figures, names = [], list(INDEX_VARIANTS)
    for round_number in range(rounds):
        for name in names[round_number % len(names):] + names[:round_number % len(names)]:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute("DROP INDEX IF EXISTS journal_by_metadata")
                if INDEX_VARIANTS[name] is not None:
                    await conn.execute(INDEX_VARIANTS[name])
                await conn.execute("CHECKPOINT")
                wal_before = (await (await conn.execute("SELECT pg_current_wal_lsn()")).fetchone())[0]
            rate, batch_ms = await commit_bench._one_round(url, payments=payments, concurrency=128, wallets=200,
                                                           vendors=20, metadata_of=order_metadata)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                wal_bytes = (await (await conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::INT8",
                                                       (wal_before,))).fetchone())[0]
            figures.append({"round": round_number + 1, "variant": name, "payments_per_s": round(rate),
                            "batch_ms": round(batch_ms, 3), "wal_bytes_per_payment": round(wal_bytes / payments)})
            print(f"round {round_number + 1} {name}: {rate:,.0f} payments/s, mean batch transaction {batch_ms:.2f} ms,"
                  f" {wal_bytes / payments:,.0f} WAL bytes/payment", flush=True)
    for name in names:
        kept = [f for f in figures if f["variant"] == name and f["round"] > 1]  # round 1 warms the database
        if kept:
            print(f"{name}: mean of rounds 2..{rounds}: {sum(f['payments_per_s'] for f in kept) / len(kept):,.0f}"
                  f" payments/s, batch {sum(f['batch_ms'] for f in kept) / len(kept):.2f} ms,"
                  f" {sum(f['wal_bytes_per_payment'] for f in kept) / len(kept):,.0f} WAL bytes/payment")
    return figures


def run(*, entries: int = 1_000_000, hot_share: float = 0.2, queries: int = 1000, accounts: int = 1000) -> dict:
    """The search measurement on a PostgreSQL of its own (what `ledger bench --search` runs)."""
    with tempfile.TemporaryDirectory(prefix="ledger-search-bench-") as root:
        postgres = EmbeddedPostgres(data_dir=Path(root) / "pg", port=free_port())
        postgres.start()
        try:
            asyncio.run(db.migrate(postgres.url))
            return asyncio.run(measure(postgres.url, entries=entries, hot_share=hot_share, queries=queries,
                                       accounts=accounts))
        finally:
            postgres.stop()


def report(result: dict) -> str:
    lines = [f"journal {result['entries']:,} entries, hot account {int(result['entries'] / 2 * result['hot_share']):,}"
             f" payments; seeded in {result['seed_s']} s, projection replayed in {result['projection_replay_s']} s",
             f"{'search':<42} {'p50 ms':>8} {'p99 ms':>8}"]
    for name, figures in result["searches_ms"].items():
        mark = "" if figures["p99"] <= P99_MS_MAX else f"  (over {P99_MS_MAX:g} ms)"
        lines.append(f"{name:<42} {figures['p50']:>8.3f} {figures['p99']:>8.3f}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.search_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--hot-share", type=float, default=0.2, help="share of payments to the searched account")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=1000, help="timed calls of each search")
    parser.add_argument("--plans", action="store_true", help="print the query plans")
    parser.add_argument("--write-ab", action="store_true", help="the write path with and without the index instead")
    parser.add_argument("--payments", type=int, default=20_000, help="payments per write round")
    parser.add_argument("--rounds", type=int, default=3, help="write rounds (each: with and without)")
    args = parser.parse_args(argv)
    if args.write_ab:
        with tempfile.TemporaryDirectory(prefix="ledger-search-bench-") as root:
            postgres = EmbeddedPostgres(data_dir=Path(root) / "pg", port=free_port())
            postgres.start()
            try:
                asyncio.run(db.migrate(postgres.url))
                asyncio.run(write_ab(postgres.url, payments=args.payments, rounds=args.rounds))
            finally:
                postgres.stop()
        return 0
    result = run(entries=args.entries, hot_share=args.hot_share, queries=args.queries, accounts=args.accounts)
    print(report(result))
    if args.plans:
        for name, plan in result["plans"].items():
            print(f"plan of {name}:\n  " + "\n  ".join(plan))
    return 0 if all(f["p99"] <= P99_MS_MAX for f in result["searches_ms"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
