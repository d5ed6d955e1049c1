"""The checks after the run: the ledger's promises judged against the database itself (nothing
lost, nothing duplicated, no phantom, no negative balance, money conserved), the projection and
the publisher cursor converging, `ledger audit`, and the committer's counters scraped from /metrics.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import re
import sys
import time
from collections import Counter, defaultdict

import aiohttp
import psycopg

from ledger.domain import holding_account_id
from tools.chaos.faults import Stack
from tools.chaos.holds import HOLD_KINDS, HoldRecord, check_holds, hold_deltas, wait_for_expiries
from tools.chaos.options import (
    AUDIT_S_MAX, CONVERGE_POLL_S, CURRENCY, REPO, SCRAPE_INTERVAL_S, Fault, KeyResult, Options,
)
from tools.chaos.report import Observer, Report


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample (or the first labelled one) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Metrics:
    """The committer's counters of every API incarnation, and its failed batches from the logs."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        # (API index, incarnation) -> (serialization retries, batches): counters live as long as a
        # process, so the last value seen of each incarnation is kept.
        self.seen: dict[tuple[int, int], tuple[float, float]] = {}

    async def scrape(self) -> None:
        while True:
            await self.scrape_once()
            await asyncio.sleep(SCRAPE_INTERVAL_S)

    async def scrape_once(self) -> None:
        for index, api in enumerate(self.stack.apis):
            if not api.alive or api.expected_down:
                continue
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.stack.session.get(api.url + "/metrics",
                                                  timeout=aiohttp.ClientTimeout(total=2)) as reply:
                    text = await reply.text()
                self.seen[(index, api.incarnation)] = (
                    metric_value(text, "ledger_commit_serialization_retries_total"),
                    metric_value(text, "ledger_commit_batch_size_count"),
                )

    def count_batches(self, report: Report) -> None:
        report.serialization_retries = int(sum(v[0] for v in self.seen.values()))
        report.batches = int(sum(v[1] for v in self.seen.values()))
        failed = re.compile(r"batch of \d+ failed: (.*)")
        for api in self.stack.apis:
            with contextlib.suppress(OSError):
                for line in api.log_path.read_text(errors="replace").splitlines():
                    match = failed.search(line)
                    if match is None:
                        continue
                    if "serializ" in match.group(1):
                        report.batches_failed_serialization += 1
                    else:
                        report.batches_failed_other += 1


@dataclasses.dataclass
class Snapshot:
    """The write model as the checks read it, after the traffic stopped."""

    journal: list  # (position, transfer id, from, to, amount, currency, reference)
    head: int
    balances: list  # (account id, kind, currency, balance)
    from_postings: dict  # account id -> sum of its postings
    keys: list  # (principal id, key, position)
    publish_cursor: int  # the last position known published; never past the head
    holds: list = dataclasses.field(default_factory=list)  # (id, from, to, amount, status, captured, reference)
    floors: dict = dataclasses.field(default_factory=dict)  # account id -> the lowest min_balance an account entry gave it

    @classmethod
    async def read(cls, database_url: str) -> "Snapshot":
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            async def rows(sql: str) -> list:
                return await (await conn.execute(sql)).fetchall()

            return cls(
                journal=await rows("SELECT position, transfer_id::TEXT, from_account_id::TEXT, to_account_id::TEXT,"
                                   " amount, currency, reference, kind, refund_of::TEXT, hold_id::TEXT FROM journal"
                                   " ORDER BY position"),
                head=(await rows("SELECT position FROM journal_head WHERE id = 1"))[0][0],
                balances=await rows("SELECT b.account_id::TEXT, b.kind, a.currency, b.balance FROM balances b"
                                    " JOIN accounts a ON a.id = b.account_id"),
                from_postings=dict(await rows(
                    "SELECT account_id::TEXT, sum(amount)::INT8 FROM postings GROUP BY account_id")),
                keys=await rows("SELECT principal_id::TEXT, key, position FROM idempotency"),
                publish_cursor=(await rows("SELECT position FROM publish_cursor WHERE id = 1"))[0][0],
                holds=await rows("SELECT id::TEXT, from_account_id::TEXT, to_account_id::TEXT, amount, status,"
                                 " captured_amount, reference FROM holds"),
                floors=dict(await rows("SELECT account_id::TEXT, min(min_balance) FROM journal WHERE kind = 'account'"
                                       " GROUP BY account_id")),
            )


class Checks:
    """Every check of one run; each finding is a violation of the report."""

    def __init__(self, options: Options, stack: Stack, log: Observer, report: Report, *,
                 results: list[KeyResult], faults: list[Fault], writes_end: float,
                 holds: list[HoldRecord] = ()) -> None:
        self.o = options
        self.stack = stack
        self.log = log
        self.report = report
        self.results = results
        self.faults = faults
        self.writes_end = writes_end
        self.holds = list(holds)

    async def check(self) -> None:
        payments = [r for r in self.results if r.purpose == "payment"]
        acked = [r for r in self.results if r.status == 201]
        self._count_acknowledgements(payments)
        self._count_recovery(payments)
        unresolved = self._check_answers()
        await wait_for_expiries(lambda: psycopg.AsyncConnection.connect(self.stack.pg.url, autocommit=True),
                                self.holds)
        snapshot = await Snapshot.read(self.stack.pg.url)
        by_id = {row[1]: row for row in snapshot.journal}
        self._check_journal(snapshot, by_id, acked, unresolved)
        self._check_keys(snapshot, by_id)
        self._check_balances(snapshot, acked)
        self._check_refunds(snapshot, by_id)
        holding = sum(b[3] for b in snapshot.balances if b[0] == str(holding_account_id(CURRENCY)))
        self.report.holds = check_holds(self.holds, snapshot.holds, snapshot.journal, holding, self.log)

    def _check_refunds(self, snapshot: Snapshot, by_id: dict) -> None:
        """No payment is refunded more than its amount; every refund names a payment and is a refund."""
        refunded: dict[str, int] = defaultdict(int)
        for row in snapshot.journal:
            if row[7] == "refund":
                refunded[row[8]] += row[4]
        for original, total in refunded.items():
            paid = by_id.get(original)
            if paid is None or paid[7] != "transfer" or total > paid[4]:
                self.report.over_refunded += 1
                self.log.violation(f"refunds of {original} add up to {total}, its payment is"
                                   f" {paid[4] if paid else 'missing'}")
        vendor_refunds = [r for r in self.results if r.purpose == "vendor_refund"]
        self.report.refunds = (sum(r.status == 201 for r in vendor_refunds), len(vendor_refunds), len(refunded))
        for r in vendor_refunds:
            row = by_id.get(r.transfer_id) if r.status == 201 else None
            if row is not None and (row[7], row[8]) != ("refund", r.refund_of):
                self.log.violation(f"refund {r.key} is in the journal as {row[7]} of {row[8]}")

    def _count_acknowledgements(self, payments: list[KeyResult]) -> None:
        report = self.report
        report.keys = len(payments)
        report.acknowledged = sum(1 for r in payments if r.status == 201)
        first_fault = self.faults[0].started if self.faults else float("inf")
        report.acknowledged_after_first_fault = sum(1 for r in payments if r.status == 201 and r.answered_at > first_fault)
        for kind in self.o.fault_kinds:
            ends = [f.ended for f in self.faults if f.kind == kind]
            if ends:
                report.acknowledged_after_last[kind] = sum(
                    1 for r in payments if r.status == 201 and r.answered_at > ends[-1])
                report.fault_seconds[kind] = sum(f.ended - f.started for f in self.faults if f.kind == kind) / len(ends)

    def _count_recovery(self, payments: list[KeyResult]) -> None:
        """Per kind, the seconds from a fault's end to the first acknowledgement after it."""
        acked_at = sorted(r.answered_at for r in payments if r.status == 201)
        for kind in self.o.fault_kinds:
            waits = []
            for fault in (f for f in self.faults if f.kind == kind):
                later = bisect.bisect_right(acked_at, fault.ended)
                if later < len(acked_at):
                    waits.append(acked_at[later] - fault.ended)
            if waits:
                self.report.recovery_seconds[kind] = (sum(waits) / len(waits), max(waits))

    def _check_answers(self) -> list[KeyResult]:
        """Every key got a definitive answer, and one transfer at most; returns the unresolved."""
        unresolved = [r for r in self.results if r.status is None]
        self.report.unresolved = len(unresolved)
        for r in unresolved[:10]:
            self.log.violation(f"key {r.key} never got a definitive answer ({r.attempts} attempts)")
        for r in self.results:
            if len(r.ids_seen) > 1:
                self.report.duplicated += 1
                self.log.violation(f"key {r.key} was acknowledged with different transfers {sorted(r.ids_seen)}")
        return unresolved

    def _check_journal(self, snapshot: Snapshot, by_id: dict, acked: list[KeyResult],
                       unresolved: list[KeyResult]) -> None:
        report, journal = self.report, snapshot.journal
        positions = [row[0] for row in journal]
        if positions != list(range(1, len(positions) + 1)) or snapshot.head != len(positions):
            self.log.violation(f"journal positions are not 1..{len(positions)} with the head there"
                               f" (head {snapshot.head})")
        if snapshot.publish_cursor > snapshot.head:
            self.log.violation(f"the publisher cursor {snapshot.publish_cursor} is past the head {snapshot.head}")
        acked_ids = {}
        for r in acked:
            row = by_id.get(r.transfer_id)
            b = r.entry
            if row is None:
                report.lost += 1
                self.log.violation(f"acknowledged transfer {r.transfer_id} (key {r.key}) is not in the journal")
            elif (row[2], row[3], row[4], row[5], row[6]) != (b["from_account_id"], b["to_account_id"], b["amount"],
                                                           b["currency"], b["reference"]):
                report.lost += 1
                self.log.violation(f"journal entry {row} differs from acknowledged {r.key}: {b}")
            acked_ids[r.transfer_id] = r
        # A hold's steps share its reference; `check_holds` judges them. Account entries answer no
        # key (`tools.chaos.controls` judges them).
        journal = [row for row in journal if row[7] not in HOLD_KINDS and row[7] != "account"]
        for reference, count in Counter(row[6] for row in journal).items():
            if count > 1:
                report.duplicated += 1
                self.log.violation(f"key {reference} has {count} journal entries")
        unresolved_keys = {r.key for r in unresolved}
        for row in journal:
            if row[1] not in acked_ids:
                if row[6] in unresolved_keys:
                    continue  # counted as unresolved already
                report.phantom += 1
                if report.phantom <= 10:
                    self.log.violation(f"journal entry {row[0]} ({row[6]}) was never acknowledged to anyone")

    def _check_keys(self, snapshot: Snapshot, by_id: dict) -> None:
        stored_keys = {(principal, key): position for principal, key, position in snapshot.keys}
        for r in self.results:
            position = stored_keys.get((r.principal_id, r.key))
            if r.status == 201 and (position is None or by_id.get(r.transfer_id, (None,))[0] != position):
                self.log.violation(f"idempotency row of {r.key} is {position}, not the acknowledged entry")
            if r.status is not None and r.status != 201 and position is not None:
                self.log.violation(f"{r.key} was answered {r.status} {r.code} but its key is used up"
                                   f" (position {position})")

    def _check_balances(self, snapshot: Snapshot, acked: list[KeyResult]) -> None:
        report = self.report
        expected: dict[str, int] = defaultdict(int)
        for r in acked:
            expected[r.entry["from_account_id"]] -= r.entry["amount"]
            expected[r.entry["to_account_id"]] += r.entry["amount"]
        for account_id, delta in hold_deltas(snapshot.holds).items():
            expected[str(holding_account_id(CURRENCY)) if account_id == "holding" else account_id] += delta
        pending = sum(row[3] for row in snapshot.holds if row[4] == "pending")
        sums: dict[str, int] = defaultdict(int)
        funding = sum(r.body["amount"] for r in acked if r.purpose == "funding")
        held = 0
        for account_id, kind, currency, balance in snapshot.balances:
            sums[currency] += balance
            if kind != "system" and balance < min(0, snapshot.floors.get(account_id) or 0):  # past any credit line
                report.negative += 1
                self.log.violation(f"{kind} account {account_id} is at {balance}")
            if kind != "system" and currency == CURRENCY:
                held += balance
            if balance != snapshot.from_postings.get(account_id, 0):
                self.log.violation(f"balance of {account_id} is {balance}, its postings sum to "
                                   f"{snapshot.from_postings.get(account_id, 0)}")
            if balance != expected.get(account_id, 0):
                self.log.violation(f"balance of {account_id} is {balance}, the acknowledgements make it "
                                   f"{expected.get(account_id, 0)}")
        conserved = all(total == 0 for total in sums.values()) and held + pending == funding == self.o.wallets * \
            self.o.funding_per_wallet
        totals = ", ".join(f"{c} sum {t}" for c, t in sorted(sums.items()))
        report.conservation = f"{'ok' if conserved else 'VIOLATED'} ({totals}; wallets and vendors hold {held}" \
                              f" + pending holds {pending} = funding {funding})"
        if not conserved:
            self.log.violation(f"money is not conserved: {report.conservation}")

    async def converge(self) -> None:
        """The projection (and the publisher cursor) must reach the journal within `converge_s` of the last
        fault or of the last write, whichever is later."""
        last_fault = self.faults[-1].ended if self.faults else self.writes_end
        deadline = max(last_fault, self.writes_end) + self.o.converge_s
        state = "not polled"
        while True:
            with contextlib.suppress(psycopg.Error):
                state = await self._projection_state()
                if state == "converged":
                    now = time.monotonic()
                    self.report.converged_s = now - self.writes_end
                    self.report.converged_after_last_fault_s = now - last_fault
                    return
            if time.monotonic() > deadline:
                self.log.violation(f"projection or publisher cursor not converged {self.o.converge_s:g} s after the last fault"
                                   f" or write: {state}")
                return
            await asyncio.sleep(CONVERGE_POLL_S)

    async def _projection_state(self) -> str:
        async with await psycopg.AsyncConnection.connect(self.stack.pg.url, autocommit=True,
                                                         connect_timeout=2) as conn:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                head = (await (await conn.execute("SELECT position FROM journal_head WHERE id = 1")).fetchone())[0]
                checkpoint = await (await conn.execute(
                    "SELECT position FROM projector_checkpoint WHERE name = 'main'")).fetchone()
                cursor = (await (await conn.execute("SELECT position FROM publish_cursor WHERE id = 1")).fetchone())[0]
                differ = (await (await conn.execute(
                    "SELECT count(*) FROM balances b FULL JOIN projected_balances p ON p.account_id = b.account_id"
                    " WHERE coalesce(b.balance, 0) <> coalesce(p.balance, 0)")).fetchone())[0]
                vendor_entries = (await (await conn.execute(
                    "SELECT count(*) FROM journal j JOIN accounts a ON a.id = j.to_account_id AND a.kind = 'vendor'"
                    # a hold, a void and an expiry name the vendor but pay it nothing; an account
                    # entry names the account whose controls it changes
                    " WHERE j.kind NOT IN ('hold', 'void', 'expire', 'account')"
                    " AND NOT EXISTS (SELECT 1 FROM verifications v WHERE v.transfer_id = j.transfer_id)"
                )).fetchone())[0]
        checkpoint = checkpoint[0] if checkpoint else 0
        if checkpoint == head and differ == 0 and cursor == head and vendor_entries == 0:
            return "converged"
        return (f"head {head}, checkpoint {checkpoint}, {differ} projected balances differ,"
                f" {vendor_entries} vendor entries unverified, publisher cursor {cursor}")

    async def audit(self) -> None:
        if importlib.util.find_spec("audit") is None:
            self.report.audit = "SKIPPED: ledger/audit.py does not exist yet"
            self.log.say(f"NOTICE: audit check {self.report.audit}")
            return
        run_audit = getattr(importlib.import_module("audit"), "run_audit", None)
        if run_audit is not None and await self._audit_in_process(run_audit):
            return
        await self._audit_command()

    async def _audit_in_process(self, run_audit) -> bool:
        """`run_audit` on the journal; False when its answer has no verdict to read."""
        try:
            outcome = run_audit(self.stack.pg.url)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            verdict = _audit_verdict(outcome)
        except Exception as error:  # the audit itself failing is a failed audit
            verdict, outcome = False, repr(error)
        if verdict is None:
            return False
        self.report.signed_heads = getattr(outcome, "tree_heads", 0)
        checked = f"{self.report.signed_heads} signed tree heads checked"
        self.report.audit = f"ok (run_audit, {checked})" if verdict else f"FAILED (run_audit): {str(outcome)[:500]}"
        if not verdict:
            self.log.violation(f"audit failed: {str(outcome)[:500]}")
        return True

    async def _audit_command(self) -> None:
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "audit", env=self.stack.env(), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(done.communicate(), AUDIT_S_MAX)
        except asyncio.TimeoutError:
            done.kill()
            output = f"(timed out after {AUDIT_S_MAX:g} s)".encode()
        if done.returncode == 0:
            self.report.audit = "ok (ledger audit exited 0)"
        else:
            self.report.audit = f"FAILED (ledger audit exited {done.returncode})"
            self.log.violation(f"ledger audit exited {done.returncode}: {output.decode(errors='replace')[-1000:]}")


def _audit_verdict(outcome) -> bool | None:
    """Read run_audit's answer whatever its shape: a bool, something with `ok`, or a dict."""
    if isinstance(outcome, bool):
        return outcome
    if isinstance(outcome, int):
        return outcome == 0
    if isinstance(outcome, dict) and "ok" in outcome:
        return bool(outcome["ok"])
    if hasattr(outcome, "ok"):
        return bool(outcome.ok)
    return None
