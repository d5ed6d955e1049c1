"""The bank test under faults, Jepsen style: `ledger chaos --duration 300 --seed N`.

A world of client wallets and vendors, funded once from a system account, is driven by many
concurrent clients paying each other and the vendors through several `ledger api` processes,
while a fault injector SIGKILLs API processes and projectors (two by default, sharing one
checkpoint) and restarts NATS and PostgreSQL, and a forger publishes junk on every ledger
subject (random bytes, entries forged at the head + 1 and far past it, forged watermarks). A share
of the payments to vendors is partly refunded by the vendor (`POST /v1/transfers/{id}/refunds`),
some by two racing refunds that cannot both fit. Every client retries its own idempotency key, with the same body, until it gets a
definitive answer (201 or 4xx). Afterwards the harness stops injecting, lets every pending key
settle, and checks the ledger's promises against the database itself:

- every acknowledged transfer is in the journal exactly once, as acknowledged (nothing lost);
- no key produced two entries, and no entry exists that no client was acknowledged for;
- no wallet or vendor balance is negative; balances per currency sum to zero and equal funding;
- no payment's refunds add up to more than it, and every acknowledged refund is a `refund` entry
  of its payment;
- the balances, recomputed from the postings and from the acknowledgements, equal the write model;
- the projection and the publisher cursor converge to the journal within `converge_s` of the last fault;
- `ledger audit` passes, its `verifications` check included (no forged payment was verified); every process stops cleanly on SIGTERM.
- with `--webhooks` (the default), a receiver on every vendor account and a `ledger webhooks`
  process that the injector also SIGKILLs: every payment to a vendor reached the receiver at
  least once, correctly signed, and no event names a transfer the journal does not hold
  (`webhooks.py`).

The fault schedule comes from `random.Random(seed)`, and the seed is printed, so a failing
schedule can be replayed (the interleaving with the clients cannot: timing is not seeded).
Every loop has a deadline. Exit status 1 on any violation.

The package: `workload` (the world, the clients and the record of every key), `faults` (the
servers, the `ledger` child processes and the seeded fault injector), `forger` (the junk on the
ledger subjects), `checks` (the verification
after the run and the scraped committer counters), `report` (the report and the progress lines),
`options` (the options and the named limits); here, the run that ties them together.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp

from tools.chaos.checks import Checks, Metrics, metric_value
from tools.chaos.controls import controls_violations
from tools.chaos.faults import Child, FaultInjector, Stack, supervise
from tools.chaos.forger import Forger
from tools.chaos.options import FAULT_KINDS, HA_FAULT_KINDS, TOPOLOGIES, KeyResult, Options
from tools.chaos.report import Observer, Report
from tools.chaos.webhooks import DELIVERY_GRACE_S, WebhookWitness
from tools.chaos.workload import Workload

HOLDERS = 2  # tasks placing and closing holds beside the payment workers

__all__ = ["FAULT_KINDS", "HA_FAULT_KINDS", "Child", "KeyResult", "Options", "Report", "main", "metric_value", "run"]


class Chaos:
    """One run: the stack up, the world built, traffic under faults, the drain, then the checks."""

    def __init__(self, options: Options, root: Path) -> None:
        self.o = options
        self.root = root
        self.report = Report(seed=options.seed, options=options)
        self.log = Observer(self.report, echo=options.echo)
        stack_class, workload_class, injector_class = Stack, Workload, FaultInjector
        self.ha = None
        if options.topology == "ha":
            from tools.chaos import ha  # the replication tooling, only when asked for

            self.ha = ha
            stack_class, workload_class, injector_class = ha.HaStack, ha.HaWorkload, ha.HaFaultInjector
        self.stack = stack_class(options, root, self.log)
        self.workload = workload_class(options, self.stack, self.log, self.report)
        self.injector = injector_class(options, self.stack, self.log, self.report)
        self.metrics = Metrics(self.stack)
        self.witness = WebhookWitness(options, self.log, self.report) if options.webhooks else None
        self.writes_end = 0.0

    async def run(self) -> Report:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            await self.stack.start(session)
            await self.workload.build_world()
            if self.witness is not None:
                await self.witness.start()
                await self.witness.register(self.stack, [*self.workload.world.vendor_accounts,
                                                         self.workload.world.other_currency_vendor])
            watchers = [asyncio.create_task(supervise(self.stack, self.injector, self.log), name="supervise"),
                        asyncio.create_task(self.metrics.scrape(), name="scrape")]
            try:
                await self.traffic()
                await self.metrics.scrape_once()
                checks = Checks(self.o, self.stack, self.log, self.report, results=self.workload.results,
                                faults=self.injector.faults, writes_end=self.writes_end,
                                holds=self.workload.holder.records)
                await checks.check()
                if self.o.controls:
                    await self._check_controls()
                await checks.converge()
                if self.witness is not None:
                    last = max([self.writes_end, *(f.ended for f in self.injector.faults)])
                    await self.witness.check(self.stack.pg.url, deadline=last + self.o.converge_s + DELIVERY_GRACE_S)
                await checks.audit()
                if self.ha is not None:
                    await self.ha.audit_by_command(checks, self.stack, self.report)
            finally:
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                if self.witness is not None:
                    await self.witness.stop()
            await self.stack.stop()
            self.metrics.count_batches(self.report)
            if self.ha is not None:
                self.ha.summarize(self.report, self.workload, self.injector, self.stack)
        return self.report

    async def _check_controls(self) -> None:
        """From the journal alone, with the audit's replay: no entry broke the controls in force."""
        account_entries, broken = await controls_violations(self.stack.pg.url)
        for violation in broken:
            self.log.violation(violation)
        self.report.controls_changed = self.workload.controller.changes
        self.report.controls = (f"{'ok' if not broken else 'VIOLATED'} ({account_entries} account entries;"
                                f" {self.workload.controller.line()})")

    async def traffic(self) -> None:
        """Traffic for `duration_s` (longer while faults of some kind are short), then the drain."""
        workload, faults = self.workload, self.injector.faults
        run_started = time.monotonic()
        run_end = run_started + self.o.duration_s
        workload.final_deadline = run_end + self.o.overrun_s_max + self.o.quiet_s + self.o.drain_s
        self.log.say(f"traffic for {self.o.duration_s:g} s with {self.o.workers} workers; faults "
                     f"{'every ~' + format(self.o.fault_interval_s, 'g') + ' s, seed ' + str(self.o.seed) if self.o.faults else 'off'}")
        workers = [asyncio.create_task(workload.worker(i), name=f"worker-{i}") for i in range(self.o.workers)]
        workers.append(asyncio.create_task(workload.treasurer(), name="treasurer"))
        workers += [asyncio.create_task(workload.holder.run(i), name=f"holder-{i}") for i in range(HOLDERS)]
        if self.o.controls:
            workers.append(asyncio.create_task(workload.controller.run(), name="controller"))
        if self.o.forger:
            forger = Forger(self.o, self.stack, self.log, self.report,
                            wallets=[wallet for _, _, wallet in workload.world.clients],
                            vendors=workload.world.vendor_accounts)
            workers.append(asyncio.create_task(forger.run(workload.stopped), name="forger"))
        if self.o.faults:
            await self.injector.run(run_end)
        if faults:  # recovery from the last fault is seen under traffic, not only in the drain
            run_end = max(run_end, faults[-1].ended + self.o.quiet_s)
        await asyncio.sleep(max(0.0, run_end - time.monotonic()))
        workload.stopped.set()
        run_end = time.monotonic()
        workload.final_deadline = run_end + self.o.drain_s
        await asyncio.gather(*workers)
        self.report.run_s = run_end - run_started
        self.writes_end = time.monotonic()
        self.report.drain_s = max(0.0, self.writes_end - run_end)
        self.log.say(f"traffic done; drained in {self.report.drain_s:.2f}s")


async def run(options: Options) -> Report:
    """Run the whole bank test and return its report (see `Report.ok` and `Report.violations`)."""
    root = Path(options.data_dir) if options.data_dir else Path(tempfile.mkdtemp(prefix="ledger-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(options, root)
    started = time.monotonic()
    try:
        report = await chaos.run()
    finally:
        chaos.stack.kill_everything()
    report.wall_s = time.monotonic() - started
    if report.ok and not options.keep_data:
        shutil.rmtree(root, ignore_errors=True)
    else:
        chaos.log.say(f"data and logs kept in {root}")
    return report


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="ledger chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="fault schedule seed (default: random, printed)")
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--projectors", type=int, default=2, help="projector processes (default 2)")
    parser.add_argument("--forger", action=argparse.BooleanOptionalAction, default=True,
                        help="publish junk on every ledger subject during the run (default on)")
    parser.add_argument("--webhooks", action=argparse.BooleanOptionalAction, default=True,
                        help="a webhook receiver on every vendor and a `ledger webhooks` process to kill (default on)")
    parser.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True,
                        help="freeze, cap and give credit lines to accounts while payments race (default on)")
    parser.add_argument("--wallets", type=int, default=20)
    parser.add_argument("--vendors", type=int, default=3)
    parser.add_argument("--workers", type=int, default=32, help="concurrent clients")
    parser.add_argument("--fault-interval", type=float, default=1.5,
                        help="mean seconds between the end of one fault and the start of the next")
    parser.add_argument("--no-faults", action="store_true", help="traffic only (to measure contention)")
    parser.add_argument("--min-faults", type=int, default=1,
                        help="inject every kind at least this often, running longer if needed")
    parser.add_argument("--quiet", type=float, default=5.0, help="no fault starts in the run's last seconds")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds pending keys may retry after the run")
    parser.add_argument("--converge", type=float, default=10.0, help="seconds the projection may take to converge")
    parser.add_argument("--topology", choices=TOPOLOGIES, default="single",
                        help="single: one PostgreSQL and one NATS; ha: a primary with a synchronous standby"
                             " and a 3-node NATS cluster, with failovers and NATS node kills")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    return Options(
        duration_s=args.duration, seed=seed, api_processes=args.api_processes, projectors=args.projectors,
        forger=args.forger, webhooks=args.webhooks, controls=args.controls, wallets=args.wallets,
        vendors=args.vendors, workers=args.workers, faults=not args.no_faults, fault_interval_s=args.fault_interval,
        quiet_s=args.quiet, min_faults_per_kind=args.min_faults, drain_s=args.drain, converge_s=args.converge, data_dir=args.data_dir,
        keep_data=args.keep_data, topology=args.topology,
    )



def main(argv: list[str] | None = None) -> int:
    """`ledger chaos`: 0 when every invariant held, 1 on any violation."""
    options = parse_args(argv)
    print(f"chaos seed {options.seed} (replay the fault schedule with --seed {options.seed})", flush=True)
    report = asyncio.run(run(options))
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1
