"""The bulk path in `make bench` (issue 25): `POST /v1/batches` against pgbench in the same run.

`ledger bench` runs `main` here, which is `tools.bench`'s run with this module as its extension
(so that bench.py, which this module uses, need not import it back). After bench's own phases,
on the same stack, world and settings:

- bulk-1, bulk-atomic-1, bulk-2, bulk-atomic-2: closed loop, `--bulk-concurrency` batches of 100
  transfers in flight (`tools.bulk_load`), independent and atomic alternated, so that a drift over
  the run weighs on both; the headline is the better of the two independent phases' throughput
  ÷ pgbench tps, with its CPU per transfer per process beside PostgreSQL's per pgbench transaction;
- bulk-1000-50%: batches of 1,000, open loop at half of the bulk path's full speed (p50/p99 per batch);
- single-1000/s: `POST /v1/transfers` open loop at 1,000 a second (`tools.loadgen`);
- bulk-statements: the bulk load again with pg_stat_statements counting (loaded at start with
  `track = none`, switched on for this phase only) and the WAL position read before and after:
  statements, calls per committer batch, rows written and index entries per transfer;
- `ledger import` of a generated file of `--import-rows` transfers (1,000,000; `--quick` 50,000),
  last, since its followers' backlog would weigh on any phase after it: rows/s ÷ the bulk path's,
  the importer's peak RSS.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from tools import bench
from tools.bulk_load import BulkRecords
from tools.loadgen import AMOUNT_MAX, MEASURING

# The targets.
BULK_VS_PGBENCH_MIN = 1.0
BULK_CPU_VS_PGBENCH_MAX = 1.5
ATOMIC_VS_INDEPENDENT_MIN = 0.8
BATCH_1000_P99_MS_MAX = 250.0
IMPORT_VS_BULK_MIN = 0.9
IMPORT_RSS_MB_MAX = 200.0
SINGLE_VS_TODAY_MIN = 0.95
SINGLE_OPEN_RATE_PER_S = 1000.0
SINGLE_OPEN_P99_MS_MAX = 25.0

BULK_BATCH = 100  # transfers a batch on the bulk path
BIG_BATCH = 1000  # the large batch whose latency is measured at half speed
BULK_CONCURRENCY = 16  # batches in flight: 1,600 transfers, past what one committer batch takes
IMPORT_ROWS = 1_000_000
IMPORT_ROWS_QUICK = 50_000
IMPORT_CONCURRENCY = 4  # batches of 1,000 in flight: under LEDGER_QUEUE_MAX (4,096)
IMPORT_TIMEOUT_S = 1800.0

AB_ORDER = (("bulk-1", "independent"), ("bulk-atomic-1", "atomic"), ("bulk-2", "independent"),
            ("bulk-atomic-2", "atomic"))
STATEMENTS_SHOWN = 14
DRAIN_S_MAX = 30.0  # the webhook backlog left by one phase is delivered before the next starts, at most this long
_WRITE = re.compile(r"^\s*(?:INSERT INTO|UPDATE|DELETE FROM|COPY)\s+(\w+)", re.IGNORECASE)


def add_arguments(parser) -> None:
    parser.add_argument("--bulk-concurrency", type=int, default=BULK_CONCURRENCY,
                        help=f"bulk path: batches of {BULK_BATCH} in flight (default {BULK_CONCURRENCY})")
    parser.add_argument("--import-rows", type=int, default=None,
                        help=f"rows of the generated `ledger import` file (default {IMPORT_ROWS:,};"
                             f" --quick {IMPORT_ROWS_QUICK:,}; 0 skips the import)")
    parser.add_argument("--no-bulk", action="store_true", help="skip the bulk path's phases")


NAME = "bulk"


def main(argv: list[str]) -> int:
    return bench.main(argv, extensions=(sys.modules[__name__],))


async def prepare(stack: bench.Stack, args) -> None:
    """pg_stat_statements is loaded in every run but counts only in the statement profile's phase
    (and, with `--profile`, everywhere): with `track = none` its hooks return at once."""
    if stack.postgres is not None and not args.profile:
        await track_statements(stack, "none")


async def finish(stack: bench.Stack, sampler: bench.Sampler, world, args, bulk: "Bulk") -> None:
    """Last of the run: `ledger import`, whose followers' backlog would weigh on any phase after it."""
    if args.no_bulk or (rows := import_rows(args)) <= 0:
        return
    bench.progress(f"ledger import of a generated file of {rows:,} transfers (last: its followers' backlog"
                   " would weigh on any phase after it)")
    await drain_webhooks(stack)
    bulk.imported = await run_import(stack, sampler, world, rows)


def import_rows(args) -> int:
    if args.import_rows is not None:
        return args.import_rows
    return IMPORT_ROWS_QUICK if args.quick else IMPORT_ROWS


# ---- one bulk phase ---------------------------------------------------------------------------


def summarize(phase: bench.Phase, records: BulkRecords) -> None:
    """Throughput counts the items answered 201 by batches answered inside the window; latency is
    per batch, over every batch sent in it; errors count items (a failed batch: all of its items)."""
    window = records.duration_s
    done = [due + latency for due, latency in zip(records.due_s, records.latency_s)]
    phase.sent = len(records.status) * records.batch
    phase.committed = sum(c for c, t in zip(records.committed, done) if t <= window)
    phase.throughput_per_s = phase.committed / window
    phase.errors = {status: n for status, n in records.item_status.items() if status != "201"}
    latencies = sorted(records.latency_s)
    if latencies:
        phase.latency_ms = {name: bench.percentile(latencies, q) * 1000
                            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))}
    buckets = max(1, int(window + 0.5))
    per_s = [0.0] * buckets
    for committed, t in zip(records.committed, done):
        if int(t) < buckets:
            per_s[int(t)] += committed
    phase.series = {"t_s": [i + 0.5 for i in range(buckets)], "committed_per_s": per_s,
                    "p50_ms": [float("nan")] * buckets, "p99_ms": [float("nan")] * buckets}


async def drain_webhooks(stack: bench.Stack) -> None:
    """Wait (bounded) until no webhook delivery is pending, so that one phase's backlog does not
    weigh on the next: a phase of 2,000 transfers/s leaves the worker seconds behind."""
    deadline = time.monotonic() + DRAIN_S_MAX
    while time.monotonic() < deadline:
        if not await bench._scalar(stack.database_url,
                                   "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"):
            return
        await asyncio.sleep(0.2)


async def run_bulk_phase(stack: bench.Stack, sampler: bench.Sampler, options: bench.Options, *, name: str,
                         mode: str = "independent", batch: int = BULK_BATCH, concurrency: int = BULK_CONCURRENCY,
                         batches_per_s: float = 0.0) -> bench.Phase:
    """One `tools.bulk_load` process for one phase, CPU counted as in `bench.run_phase`."""
    out = stack.run_dir / f"bulkload-{name}.json"
    phase = bench.Phase(name=name, scenario=f"batches of {batch}, {mode}", mode="open" if batches_per_s else "closed",
                        concurrency=concurrency, rate_per_s=round(batches_per_s * batch, 1),
                        duration_s=options.duration_s)
    await drain_webhooks(stack)
    await bench._execute(stack.database_url, "CHECKPOINT")
    command = [sys.executable, "-m", "tools.bulk_load", "--world", str(options.world_path), "--out", str(out),
               "--batch", str(batch), "--mode", mode, "--concurrency", str(concurrency), "--rate", str(batches_per_s),
               "--duration", str(options.duration_s), "--warmup", str(options.warmup_s),
               "--key-prefix", f"{options.run_id}-{name}"]
    process = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    sampler.watch("client", process.pid)
    assert process.stdout is not None
    try:
        while (line := await process.stdout.readline()) and line.strip() != MEASURING.encode():
            pass  # the warm-up
        before, counters = sampler.snapshot(), await bench.committer_counters(stack)
        await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.kill()
        raise
    phase.cpu_cores = sampler.cores_since(before)
    phase.committer = bench.committer_summary(counters, await bench.committer_counters(stack))
    sampler.unwatch("client")
    if process.returncode != 0:
        raise RuntimeError(f"the bulk load generator exited with {process.returncode} in phase {name}")
    records = msgspec.json.decode(out.read_bytes(), type=BulkRecords)
    summarize(phase, records)
    phase.lag.catch_up_s = await bench.wait_projector(stack.database_url, timeout_s=bench.CATCH_UP_S_MAX)
    return phase


# ---- the statement profile ------------------------------------------------------------------


async def track_statements(stack: bench.Stack, value: str) -> None:
    """pg_stat_statements.track, for every backend at its next statement (a reload)."""
    await bench._execute(stack.database_url, f"ALTER SYSTEM SET pg_stat_statements.track = '{value}'",
                         "SELECT pg_reload_conf()")


async def _table_counts(url: str) -> dict[str, tuple[int, int, int, int]]:
    """Per table: (indexes, rows inserted, updated, HOT-updated) so far (the statistics lag by
    up to a second per backend, so the HOT share is a share, not a count)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        rows = await (await conn.execute(
            "SELECT s.relname, (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid)::INT,"
            " s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd FROM pg_stat_user_tables s")).fetchall()
    return {name: (indexes, ins, upd, hot) for name, indexes, ins, upd, hot in rows}


async def _wal_lsn(url: str) -> int:
    return int(await bench._scalar(url, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


async def statement_profile(stack: bench.Stack, sampler: bench.Sampler, options: bench.Options,
                            concurrency: int) -> tuple[bench.Phase, dict[str, Any]] | None:
    """The bulk load once more with pg_stat_statements counting; per transfer, where PostgreSQL's
    share goes (execution time, rows, index entries, WAL), and statements per committer batch."""
    if stack.postgres is None:
        return None
    try:
        await bench._execute(stack.database_url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await track_statements(stack, "top")
        await bench._execute(stack.database_url, "SELECT pg_stat_statements_reset()")
    except psycopg.Error as error:
        bench.progress(f"no statement profile: {error}")
        return None
    tables_before, lsn_before = await _table_counts(stack.database_url), await _wal_lsn(stack.database_url)
    head_before = await bench.journal_head(stack.database_url)
    try:
        phase = await run_bulk_phase(stack, sampler, options, name="bulk-statements", concurrency=concurrency)
    finally:
        await track_statements(stack, "none")
    transfers = max(1, await bench.journal_head(stack.database_url) - head_before)
    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
        rows = await (await conn.execute(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time, rows, wal_bytes"
            " FROM pg_stat_statements ORDER BY total_exec_time DESC")).fetchall()
    tables_after = await _table_counts(stack.database_url)
    # The counters run from before the warm-up to after the catch-up: batches over the same span.
    batches = max(1, round(transfers / phase.committer["batch_mean"])) if phase.committer else 1
    profile = _profile(rows, transfers, batches, tables_before, tables_after)
    profile["wal_bytes_per_transfer"] = round((await _wal_lsn(stack.database_url) - lsn_before) / transfers)
    return phase, profile


def _profile(rows: list[tuple], transfers: int, batches: int, before: dict, after: dict) -> dict[str, Any]:
    """Per statement and per table written, per transfer (and calls per committer batch)."""
    statements, written = [], {}
    for query, calls, ms, nrows, wal in rows:
        statements.append({"query": query[:bench.STATEMENT_CHARS_SHOWN], "exec_us": round(ms * 1000 / transfers, 1),
                           "calls_per_batch": round(calls / batches, 2), "rows": round(nrows / transfers, 3),
                           "wal_bytes": round(int(wal) / transfers)})
        if (match := _WRITE.match(query)) is not None:
            table = match.group(1).lower()
            written[table] = written.get(table, 0.0) + nrows / transfers
    tables = {}
    for table, per in sorted(written.items(), key=lambda kv: -kv[1]):
        indexes, ins, upd, hot = after.get(table, (0, 0, 0, 0))
        _, ins0, upd0, hot0 = before.get(table, (0, 0, 0, 0))
        updated = upd - upd0
        hot_share = (hot - hot0) / updated if updated > 0 else None
        tables[table] = {"rows": round(per, 3), "indexes": indexes,
                         "hot_share": None if hot_share is None else round(hot_share, 2)}
    return {"transfers": transfers, "batches": batches,
            "exec_us_per_transfer": round(sum(r[2] for r in rows) * 1000 / transfers, 1),
            "statements_per_batch": round(sum(r[1] for r in rows) / batches, 1),
            "statements": statements[:STATEMENTS_SHOWN], "tables": tables}


def index_entries_per_transfer(profile: dict[str, Any]) -> float:
    """Index entries written per transfer: every index of an inserted row, of a non-HOT update."""
    total = 0.0
    for table in profile["tables"].values():
        hot = table["hot_share"] or 0.0
        total += table["rows"] * table["indexes"] * (1 - hot)
    return total


def profile_text(profile: dict[str, Any], pg_us: float | None) -> str:
    lines = [f"bulk path statement profile (pg_stat_statements in phase bulk-statements, {profile['transfers']:,}"
             f" transfers in {profile['batches']:,} committer batches): {profile['exec_us_per_transfer']:.0f} µs of"
             f" execution per transfer, {profile['statements_per_batch']:.1f} statements per committer batch (every"
             f" process's), {profile['wal_bytes_per_transfer']:,} WAL bytes per transfer"
             + (f"; postgres CPU {pg_us:.0f} µs per transfer" if pg_us else ""),
             "  rows written per transfer, by table (indexes; share of updates that were HOT):"]
    for table, one in profile["tables"].items():
        hot = "" if one["hot_share"] is None else f", {one['hot_share']:.0%} HOT"
        lines.append(f"    {one['rows']:6.3f}  {table} ({one['indexes']} indexes{hot})")
    lines.append(f"  index entries written per transfer: {index_entries_per_transfer(profile):.1f}")
    lines.append("  statements, costliest first: exec µs/transfer, calls/batch, rows/transfer, WAL bytes/transfer:")
    lines += [f"    {s['exec_us']:6.1f} µs {s['calls_per_batch']:7.2f}× {s['rows']:7.3f} {s['wal_bytes']:6,} B  {s['query']}"
              for s in profile["statements"]]
    return "\n".join(lines)


# ---- ledger import ----------------------------------------------------------------------------


@dataclass
class ImportRun:
    rows: int = 0
    committed: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    peak_rss_mb: float = 0.0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    generate_s: float = 0.0


def write_import_file(path: Path, world, rows: int, *, seed: int = 7) -> None:
    """`rows` transfers from the first client's wallets to random vendors, as CSV (no keys: the
    importer derives them from the file's digest and the row number)."""
    token = world.wallets[0].token
    wallets = [w.account_id for w in world.wallets if w.token == token]
    rng = random.Random(seed)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["type", "from_account_id", "to_account_id", "amount", "currency", "reference"])
        for _ in range(rows):
            writer.writerow(["transfer", rng.choice(wallets), rng.choice(world.vendors), rng.randint(1, AMOUNT_MAX),
                             world.currency, "bench import"])


async def run_import(stack: bench.Stack, sampler: bench.Sampler, world, rows: int) -> ImportRun:
    """`ledger import` of a generated file, as an operator runs it, timed by its own summary."""
    path = stack.run_dir / "import.csv"
    result = ImportRun()
    started = asyncio.get_running_loop().time()
    await asyncio.to_thread(write_import_file, path, world, rows)
    result.generate_s = round(asyncio.get_running_loop().time() - started, 1)
    await bench._execute(stack.database_url, "CHECKPOINT")
    env = {**os.environ, "LEDGER_API_URL": stack.api_url, "LEDGER_TOKEN": world.wallets[0].token}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "import", str(path), "--json", "--concurrency", str(IMPORT_CONCURRENCY),
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sampler.watch("import", process.pid, memory=True)
    before = sampler.snapshot()
    try:
        output, _ = await asyncio.wait_for(process.communicate(), IMPORT_TIMEOUT_S)
    except BaseException:
        if process.returncode is None:
            process.kill()
        raise
    result.cpu_cores = sampler.cores_since(before)
    sampler.unwatch("import")
    result.exit_code = process.returncode
    result.peak_rss_mb = round(sampler.peak_kb.get("import", 0) / 1024, 1)
    lines = output.decode(errors="replace").strip().splitlines()
    try:
        summary = json.loads(lines[-1])
    except (IndexError, ValueError):
        bench.progress(f"ledger import printed no summary (exit {process.returncode})")
    else:
        result.rows, result.committed = summary["rows"], summary["committed"] + summary["replayed"]
        result.rejected, result.seconds, result.rows_per_s = summary["rejected"], summary["seconds"], summary["rows_per_s"]
    path.unlink(missing_ok=True)
    return result


# ---- the bulk phases, in order -----------------------------------------------------------------


@dataclass
class Bulk:
    phases: dict[str, bench.Phase] = field(default_factory=dict)
    statements: dict[str, Any] | None = None
    imported: ImportRun | None = None


async def measure(stack: bench.Stack, sampler: bench.Sampler, options: bench.Options, args) -> Bulk:
    bulk, concurrency = Bulk(), args.bulk_concurrency
    if args.no_bulk:
        return bulk
    bench.progress(f"bulk path: batches of {BULK_BATCH}, {concurrency} in flight, independent and atomic alternated,"
                   f" {options.duration_s:.0f} s each")
    for name, mode in AB_ORDER:
        bulk.phases[name] = await run_bulk_phase(stack, sampler, options, name=name, mode=mode,
                                                 concurrency=concurrency)
    full = mean_rate(bulk.phases, "independent")
    rate = max(0.1, full / 2 / BIG_BATCH)
    bench.progress(f"batches of {BIG_BATCH}, open loop at {rate:.2f} batches/s (half the bulk path's speed)")
    bulk.phases["bulk-1000-50%"] = await run_bulk_phase(stack, sampler, options, name="bulk-1000-50%", batch=BIG_BATCH,
                                                        batches_per_s=rate)
    bench.progress(f"single requests, open loop at {SINGLE_OPEN_RATE_PER_S:,.0f}/s")
    await drain_webhooks(stack)
    bulk.phases["single-1000-per-s"] = await bench.run_phase(stack, sampler, options, name="single-1000-per-s",
                                                         scenario="uniform", rate_per_s=SINGLE_OPEN_RATE_PER_S)
    bench.progress("bulk path with pg_stat_statements counting: the statement profile")
    profiled = await statement_profile(stack, sampler, options, concurrency)
    if profiled is not None:
        bulk.phases["bulk-statements"], bulk.statements = profiled
    return bulk


def mean_rate(phases: dict[str, bench.Phase], mode: str) -> float:
    rates = [phases[name].throughput_per_s for name, m in AB_ORDER if m == mode and name in phases]
    return sum(rates) / len(rates) if rates else 0.0


def mean_cpu(phases: dict[str, bench.Phase], mode: str) -> dict[str, float]:
    """CPU µs per transfer of each process group, the mean over the phases of `mode`."""
    per = [bench.cpu_us_per_transfer(phases[name]) for name, m in AB_ORDER if m == mode and name in phases]
    per = [one for one in per if one]
    if not per:
        return {}
    groups = {group for one in per for group in one}
    return {group: sum(one.get(group, 0.0) for one in per) / len(per) for group in groups}


# ---- the report -------------------------------------------------------------------------------


def rows(bulk: Bulk, phases: dict[str, bench.Phase], pgbench: bench.Pgbench) -> list[bench.Row]:
    if not bulk.phases:
        return []
    out = _throughput_rows(bulk, pgbench)
    single, today = bulk.phases.get("single-1000-per-s"), bench.median_uniform(phases)
    big = bulk.phases.get("bulk-1000-50%")
    if big is not None and big.latency_ms:
        out.append(bench.Row(f"batch of {BIG_BATCH} p50/p99 at 50% of the bulk path ({big.rate_per_s:,.0f}/s, open loop)",
                             f"{big.latency_ms['p50']:.0f} / {big.latency_ms['p99']:.0f} ms"
                             f" ({big.throughput_per_s:,.0f}/s, {big.error_count} errors)",
                             f"p99 ≤ {BATCH_1000_P99_MS_MAX:.0f} ms", big.latency_ms["p99"] <= BATCH_1000_P99_MS_MAX))
    out.append(bench.Row("single path: median uniform p50 latency, transfers/s",
                         f"{today.latency_ms.get('p50', float('nan')):.1f} ms, {today.throughput_per_s:,.0f}/s"
                         f" ({today.name}; ≥ {SINGLE_VS_TODAY_MIN}× main's: compare runs of both, alternated)"))
    if single is not None and single.latency_ms:
        out.append(bench.Row(f"single path p50/p99 at {SINGLE_OPEN_RATE_PER_S:,.0f}/s (open loop)",
                             f"{single.latency_ms['p50']:.1f} / {single.latency_ms['p99']:.1f} ms"
                             f" ({single.error_count} errors)", f"p99 ≤ {SINGLE_OPEN_P99_MS_MAX:.0f} ms",
                             single.latency_ms["p99"] <= SINGLE_OPEN_P99_MS_MAX))
    if bulk.imported is not None:
        out += _import_rows(bulk)
    return out


def _throughput_rows(bulk: Bulk, pgbench: bench.Pgbench) -> list[bench.Row]:
    independent, atomic = mean_rate(bulk.phases, "independent"), mean_rate(bulk.phases, "atomic")
    each = " / ".join(f"{bulk.phases[n].throughput_per_s:,.0f}" for n, _ in AB_ORDER if n in bulk.phases)
    errors = sum(bulk.phases[n].error_count for n, _ in AB_ORDER if n in bulk.phases)
    out = [bench.Row(f"bulk transfers/s (batches of {BULK_BATCH}, independent; mean of 2)",
                     f"{independent:,.0f}/s ({each}: ind, atomic, ind, atomic; {errors} errors)", "0 errors",
                     errors == 0)]
    if pgbench.tps:
        ratio = independent / pgbench.tps
        out.append(bench.Row("bulk ÷ pgbench", f"{ratio:.2f}×", f"≥ {BULK_VS_PGBENCH_MIN}×", ratio >= BULK_VS_PGBENCH_MIN))
    per = mean_cpu(bulk.phases, "independent")
    yardstick = bench.pgbench_cpu_us_per_transaction(pgbench)
    if per:
        groups = ", ".join(f"{g} {per[g]:.0f}" for g in bench.SERVER_GROUPS if g in per)
        out.append(bench.Row("bulk server CPU µs per transfer", f"{per['server']:.0f} µs ({groups})"))
        if yardstick:
            ratio = per["server"] / yardstick
            out.append(bench.Row("  ÷ postgres CPU µs per pgbench transaction", f"{ratio:.2f}× ({yardstick:.0f} µs;"
                                 f" postgres alone {per.get('postgres', 0.0) / yardstick:.2f}×)",
                                 f"≤ {BULK_CPU_VS_PGBENCH_MAX}×", ratio <= BULK_CPU_VS_PGBENCH_MAX))
    if independent:
        ratio = atomic / independent
        out.append(bench.Row("atomic ÷ independent (batches of 100, alternated)", f"{ratio:.2f}× ({atomic:,.0f}/s)",
                             f"≥ {ATOMIC_VS_INDEPENDENT_MIN}×", ratio >= ATOMIC_VS_INDEPENDENT_MIN))
    return out


def _import_rows(bulk: Bulk) -> list[bench.Row]:
    run = bulk.imported
    independent = mean_rate(bulk.phases, "independent")
    ratio = run.rows_per_s / independent if independent else 0.0
    ok = run.exit_code == 0 and run.committed == run.rows
    return [bench.Row(f"ledger import of {run.rows:,} rows (--concurrency {IMPORT_CONCURRENCY})",
                      f"{run.rows_per_s:,.0f} rows/s ({ratio:.2f}× bulk; {run.committed:,} committed,"
                      f" {run.rejected} rejected, exit {run.exit_code}, {run.seconds:,.0f} s)",
                      f"≥ {IMPORT_VS_BULK_MIN}× bulk", ok and ratio >= IMPORT_VS_BULK_MIN),
            bench.Row("  importer peak RSS", f"{run.peak_rss_mb:.0f} MB", f"≤ {IMPORT_RSS_MB_MAX:.0f} MB",
                      0 < run.peak_rss_mb <= IMPORT_RSS_MB_MAX)]


def details(bulk: Bulk) -> str:
    text = ""
    if bulk.imported is not None and bulk.imported.cpu_cores:
        text += f"\nimport: CPU in cores {bench._cores(bulk.imported.cpu_cores)}"
        if bulk.imported.rows_per_s:
            text += ("\n  CPU µs per imported row: " + ", ".join(
                f"{g} {c / bulk.imported.rows_per_s * 1e6:.0f}" for g, c in
                sorted(bulk.imported.cpu_cores.items(), key=lambda kv: -kv[1])))
    if bulk.statements is not None:
        pg = bench.cpu_us_per_transfer(bulk.phases["bulk-statements"]).get("postgres")
        text += "\n\n" + profile_text(bulk.statements, pg)
    return text


def history(bulk: Bulk, pgbench: bench.Pgbench) -> dict[str, float | None]:
    """The bulk ratio (and its CPU ratio) for `history.jsonl` and its chart."""
    independent = mean_rate(bulk.phases, "independent")
    per = mean_cpu(bulk.phases, "independent")
    yardstick = bench.pgbench_cpu_us_per_transaction(pgbench)
    if not independent:
        return {}
    return {"bulk_per_s": round(independent, 1),
            "bulk_ratio": round(independent / pgbench.tps, 3) if pgbench.tps else None,
            "bulk_server_cpu_us": round(per["server"], 1) if per else None,
            "bulk_cpu_ratio": round(per["server"] / yardstick, 3) if per and yardstick else None,
            "atomic_ratio": round(mean_rate(bulk.phases, "atomic") / independent, 3)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
