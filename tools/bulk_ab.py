"""A/B of two versions of the API's write path, alternated in one run on one stack and one world.

The machine is shared and noisy, so a cut is kept only on a comparison made side by side: this
starts the bench's stack once (`tools.bench`: embedded PostgreSQL and NATS, the projector, the
webhook worker and its receiver, the world), then runs the bulk path (`tools.bulk_bench`, batches
of 100) and optionally the single path (`tools.loadgen`, closed loop) with the API process
restarted from checkout A, then B, then B, A, A, B ... (`--pairs` times each), and prints one line per
phase and the mean of each side with B ÷ A and the spread between pairs.

    git worktree add --detach /tmp/bench-base main
    python -m tools.bulk_ab --a /tmp/bench-base --b . [--pairs 3] [--duration 10] [--single] [--b-env K=V]

Only the API runs from the checkout under test (`-m` puts the working directory first on the
path), so the cuts it measures are those of the API's process: the committer and the store;
`--webhooks` runs the webhook worker from it too (for cuts of the delivery path).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import msgspec

from tools import bench, bulk_bench
from tools.embedded import free_port

SHOWN_GROUPS = ("server", "api", "postgres", "nats", "projector", "webhooks")


async def _restart_api(stack: bench.Stack, sampler: bench.Sampler, port: int, code: Path, env: dict[str, str]) -> None:
    bench._stop_process(stack.api)
    sampler.unwatch("api")
    stack.api = bench._spawn(stack, "api", port, cwd=code, **env)
    sampler.watch("api", stack.api.pid, memory=True)
    await bench._wait_ready(stack)


async def _restart_webhooks(stack: bench.Stack, sampler: bench.Sampler, code: Path) -> None:
    """The webhook worker from `code` (`--webhooks`); it follows the journal from its cursor, and
    rows the stopped one held leased are claimed again once their lease ends."""
    bench._stop_process(stack.webhooks)
    sampler.unwatch("webhooks")
    stack.webhooks = bench._spawn(stack, "webhooks", free_port(), cwd=code)
    sampler.watch("webhooks", stack.webhooks.pid, memory=True)


async def _setup(stack: bench.Stack, sampler: bench.Sampler, args, code: Path, env: dict[str, str]) -> bench.Options:
    from ledger import db

    await db.migrate(stack.database_url)
    await bulk_bench.track_statements(stack, "none")
    port = free_port()
    stack.api_url = f"http://127.0.0.1:{port}"
    stack.projector = bench._spawn(stack, "projector", free_port())
    sampler.watch("projector", stack.projector.pid, memory=True)
    await _restart_api(stack, sampler, port, code, env)
    receiver = bench.start_receiver(stack, sampler)
    stack.webhooks = bench._spawn(stack, "webhooks", free_port())
    sampler.watch("webhooks", stack.webhooks.pid, memory=True)
    world = await bench.create_world(stack, clients=20, wallets=200, vendors=20, webhook_url=receiver)
    world_path = stack.run_dir / "world.json"
    world_path.write_bytes(msgspec.json.encode(world))
    return bench.Options(duration_s=args.duration, warmup_s=args.warmup, concurrency=128, run_id=stack.run_dir.name,
                         world_path=world_path)


async def _alternate(stack: bench.Stack, sampler: bench.Sampler, args) -> list[tuple[str, str, bench.Phase]]:
    sides = {"A": (args.a.absolute(), _env(args.a_env)), "B": (args.b.absolute(), _env(args.b_env))}
    options = await _setup(stack, sampler, args, *sides["A"])
    port = int(stack.api_url.rsplit(":", 1)[1])
    measured = []
    for pair in range(args.pairs):
        # A B, B A, A B, ...: a drift over the run (the tables growing) weighs on both sides alike.
        for side in ("A", "B") if pair % 2 == 0 else ("B", "A"):
            code, env = sides[side]
            await _restart_api(stack, sampler, port, code, env)
            if args.webhooks:
                await _restart_webhooks(stack, sampler, code)
            await bulk_bench.drain_webhooks(stack)
            name = f"{side}{pair + 1}"
            bench.progress(f"{name}: bulk, {args.duration:.0f} s")
            measured.append((side, "bulk", await bulk_bench.run_bulk_phase(
                stack, sampler, options, name=f"bulk-{name}", concurrency=args.bulk_concurrency)))
            if args.single:
                bench.progress(f"{name}: single, {args.duration:.0f} s")
                measured.append((side, "single", await bench.run_phase(stack, sampler, options, name=f"single-{name}",
                                                                       scenario="uniform")))
    return measured


def _env(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def report(measured: list[tuple[str, str, bench.Phase]]) -> str:
    lines = ["phase          transfers/s  " + "  ".join(f"{g:>9}" for g in SHOWN_GROUPS)
             + "  batch ms  per batch  others", "-" * 120]
    for _, _, phase in measured:
        per = bench.cpu_us_per_transfer(phase)
        c = phase.committer
        lines.append(f"{phase.name:<14} {phase.throughput_per_s:>11,.0f}  "
                     + "  ".join(f"{per.get(g, 0):>9.0f}" for g in SHOWN_GROUPS)
                     + f"  {c.get('commit_ms_mean', 0):>8.1f}  {c.get('batch_mean', 0):>9.1f}"
                     f"  {phase.cpu_cores.get('others', 0):>6.2f}  {phase.error_count} errors")
    for load in sorted({load for _, load, _ in measured}):
        side = {s: [p for t, l, p in measured if t == s and l == load] for s in ("A", "B")}
        mean = {s: _mean(phases) for s, phases in side.items()}
        ratio = {k: mean["B"][k] / mean["A"][k] if mean["A"].get(k) else float("nan") for k in mean["A"]}
        pairs = [b.throughput_per_s / a.throughput_per_s for a, b in zip(side["A"], side["B"]) if a.throughput_per_s]
        lines.append(f"{load}: B ÷ A transfers/s {ratio['rate']:.3f} (per pair " + " / ".join(f"{r:.3f}" for r in pairs)
                     + "); CPU µs per transfer B ÷ A: " + ", ".join(f"{g} {mean['A'][g]:.0f}→{mean['B'][g]:.0f}"
                                                                      f" ({ratio[g]:.3f})" for g in SHOWN_GROUPS))
    return "\n".join(lines)


def _mean(phases: list[bench.Phase]) -> dict[str, float]:
    out = {"rate": sum(p.throughput_per_s for p in phases) / len(phases)}
    for group in SHOWN_GROUPS:
        out[group] = sum(bench.cpu_us_per_transfer(p).get(group, 0.0) for p in phases) / len(phases)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bulk_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    parser.add_argument("--b", type=Path, default=Path("."), help="checkout B (default: this one)")
    parser.add_argument("--a-env", action="append", default=[], metavar="K=V", help="A's API environment")
    parser.add_argument("--b-env", action="append", default=[], metavar="K=V", help="B's API environment")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--bulk-concurrency", type=int, default=bulk_bench.BULK_CONCURRENCY)
    parser.add_argument("--webhooks", action="store_true",
                        help="also run the webhook worker from each side's checkout (restarted before each phase)")
    parser.add_argument("--single", action="store_true", help="also the single path (closed loop) per side")
    parser.add_argument("--out-dir", type=Path, default=Path(".ledger/bench"))
    args = parser.parse_args(argv)
    run_dir = (args.out_dir / f"ab-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    sampler = bench.Sampler()
    sampler.start()
    stack = bench._start_stack(argparse.Namespace(database_url=None, nats_url=None, profile=None), run_dir)
    bench._watch_servers(sampler)
    try:
        measured = asyncio.run(_alternate(stack, sampler, args))
    finally:
        bench._stop_stack(stack, keep_data=False)
        sampler.stop()
    text = f"A = {args.a} {args.a_env}, B = {args.b} {args.b_env}\n" + report(measured)
    (run_dir / "ab.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
