"""Measure `ledger audit` on a large journal: replay speed and peak memory as the journal grows.

Starts a dedicated PostgreSQL in a temporary directory, seeds it (`tools.seed`) up to each size
in turn, and after each runs `ledger audit --json` in a child process, as an operator would,
reading the child's own peak resident set size from `wait4`. Memory that does not grow between
sizes is the point: the replay keeps a balance per account, nothing per entry.

    python -m tools.audit_bench [--sizes 100000,1000000] [--accounts 1000] [--project] [--code DIR,DIR] [--rounds N]

`--project` lets the projector replay the journal before each audit, as `make bench` does (half
the entries then have a verification the audit compares). `--code` audits each size with each
checkout in turn (the child runs with that directory first on its path), `--rounds` times: an
A/B of two versions on one seeded database, in one sitting. PostgreSQL's CPU during each audit
is counted too (its server process and every backend, from /proc).
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
from dataclasses import dataclass
from pathlib import Path

from ledger import db
from tools.embedded import EmbeddedPostgres, free_port
from tools.procstat import process_stat
from tools.seed import seed_journal

DEFAULT_SIZES = (100_000, 1_000_000)


@dataclass(frozen=True, slots=True)
class Measurement:
    entries: int
    code: str  # the checkout audited ("." for this one)
    seed_entries_per_s: float
    audit_ok: bool
    audit_entries_per_s: float
    audit_wall_s: float
    audit_cpu_s: float  # the child's user + system time: comparable across loaded machines
    postgres_cpu_s: float  # PostgreSQL's meanwhile: the server and every backend
    peak_rss_mib: float


def audit_in_child(database_url: str, workdir: Path, code: str | None = None) -> tuple[dict, float, os.struct_rusage]:
    """Run `ledger audit --json` in a child; returns its report, wall seconds and resource usage.
    `code`: a checkout to run instead of this one (first on the child's path)."""
    report_path = workdir / "audit.json"
    started = time.monotonic()
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url}
    if code is not None:
        env["PYTHONPATH"] = code
    with open(report_path, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "cli", "audit", "--json"],
            env=env, stdout=out, stdin=subprocess.DEVNULL, cwd=code,  # `-m` puts the working directory first
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    return json.loads(report_path.read_bytes()), time.monotonic() - started, usage


@dataclass(frozen=True, slots=True)
class AuditFigures:
    """One `ledger audit` of a whole journal, as the `make bench` table shows it."""

    ok: bool
    entries: int
    entries_per_s: float
    cpu_us_per_entry: float  # user + system of the audit and its worker processes, per entry
    peak_rss_mib: float  # the largest single process of the audit (its own, or a worker's)


def measure_audit(database_url: str) -> AuditFigures:
    """Run `ledger audit --json` against `database_url` in a child and return its figures."""
    with tempfile.TemporaryDirectory(prefix="ledger-audit-") as root:
        report, _, usage = audit_in_child(database_url, Path(root))
    entries = report["entries"]
    return AuditFigures(
        ok=report["ok"], entries=entries, entries_per_s=report["entries_per_s"],
        cpu_us_per_entry=round((usage.ru_utime + usage.ru_stime) / entries * 1e6, 1) if entries else 0.0,
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),  # Linux reports ru_maxrss in KiB
    )


def postgres_cpu_s(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server so far: its own, its live children's (backends, workers)
    and those of the children it has reaped (their times land in its cutime/cstime)."""
    ticks = 0
    for pid in Path("/proc").iterdir():
        if pid.name.isdigit() and (stat := process_stat(int(pid.name))) is not None:
            parent, own, reaped = stat
            if int(pid.name) == postmaster:
                ticks += own + reaped
            elif parent == postmaster:
                ticks += own
    return ticks / os.sysconf("SC_CLK_TCK")


async def project(database_url: str) -> None:
    """Let the projector replay the journal up to its head, as `make bench` does before its audit."""
    from projector.consumer import Projector, _bus
    from ledger import config, store

    settings = config.Settings().replace(database={"url": database_url})
    pool = db.make_pool(database_url, role=store.PROJECTOR_ROLE, size_max=2,
                        timeouts=db.timeouts_from(settings.database))
    await pool.open(wait=True)
    try:
        projector = Projector(settings=settings, pool=pool, bus=_bus(settings, "audit-bench"))
        await projector.load_cursor()
        await projector.catch_up_from_journal()
    finally:
        await pool.close()


def measure(sizes: list[int], *, accounts: int, workdir: Path, projected: bool = False,
            codes: tuple[str | None, ...] = (None,), rounds: int = 1) -> list[Measurement]:
    postgres = EmbeddedPostgres(data_dir=workdir / "pg", port=free_port())
    postgres.start()
    postmaster = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])
    try:
        asyncio.run(db.migrate(postgres.url))
        results, seeded = [], 0
        for size in sizes:
            started = time.monotonic()
            asyncio.run(seed_journal(postgres.url, entries=size - seeded, accounts=accounts))
            seed_s = time.monotonic() - started
            if projected:
                asyncio.run(project(postgres.url))
            for _ in range(rounds):
                for code in codes:
                    cpu_before = postgres_cpu_s(postmaster)
                    report, wall_s, usage = audit_in_child(postgres.url, workdir, code)
                    results.append(Measurement(
                        entries=size,
                        code=code or ".",
                        seed_entries_per_s=round((size - seeded) / seed_s),
                        audit_ok=report["ok"],
                        audit_entries_per_s=report["entries_per_s"],
                        audit_wall_s=round(wall_s, 1),
                        audit_cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
                        postgres_cpu_s=round(postgres_cpu_s(postmaster) - cpu_before, 1),
                        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),  # Linux reports ru_maxrss in KiB
                    ))
                    print(results[-1], file=sys.stderr, flush=True)
            seeded = size
        return results
    finally:
        postgres.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.audit_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="journal sizes, ascending")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts each seeding step creates")
    parser.add_argument("--project", action="store_true", help="let the projector replay the journal before each audit")
    parser.add_argument("--code", default="", help="checkouts to audit with in turn, comma-separated (default: this one)")
    parser.add_argument("--rounds", type=int, default=1, help="audits of each size with each checkout")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    assert sizes == sorted(sizes) and sizes[0] > 0, "sizes must be positive and ascending"
    codes = tuple(str(Path(code).resolve()) for code in args.code.split(",")) if args.code else (None,)
    with tempfile.TemporaryDirectory(prefix="ledger-audit-bench-") as root:
        results = measure(sizes, accounts=args.accounts, workdir=Path(root), projected=args.project, codes=codes,
                          rounds=args.rounds)
    print("| code | entries | seed entries/s | audit ok | audit entries/s | audit wall s | audit CPU µs/entry"
          " | PostgreSQL CPU µs/entry | peak RSS MiB |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.code} | {r.entries:,} | {r.seed_entries_per_s:,.0f} | {r.audit_ok} | {r.audit_entries_per_s:,.0f}"
              f" | {r.audit_wall_s} | {r.audit_cpu_s / r.entries * 1e6:.1f} | {r.postgres_cpu_s / r.entries * 1e6:.1f}"
              f" | {r.peak_rss_mib} |")
    return 0 if all(r.audit_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
