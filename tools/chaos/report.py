"""The report of a run, and the observer that prints progress and records every violation."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

from tools.chaos.options import Options


@dataclasses.dataclass
class Report:
    seed: int
    options: Options
    keys: int = 0
    requests: int = 0
    acknowledged: int = 0
    replayed: int = 0
    # Replayed 201s of keys sent once, by how their earlier attempts ended: one of them had
    # committed, but its answer was lost. Where that is only "503 unavailable", a 503 that said
    # "the transfer was not committed" (as the 503 once said) was wrong.
    replayed_after: Counter = dataclasses.field(default_factory=Counter)
    acknowledged_after_first_fault: int = 0
    acknowledged_after_last: dict = dataclasses.field(default_factory=dict)
    rejected: Counter = dataclasses.field(default_factory=Counter)
    retried: Counter = dataclasses.field(default_factory=Counter)
    faults: Counter = dataclasses.field(default_factory=Counter)
    fault_seconds: dict = dataclasses.field(default_factory=dict)
    # Per fault kind, (mean, max) seconds from a fault's end to the first acknowledgement after it.
    recovery_seconds: dict = dataclasses.field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    phantom: int = 0
    unresolved: int = 0
    negative: int = 0
    over_refunded: int = 0  # payments whose refunds add up to more than them
    refunds: tuple = (0, 0, 0)  # vendor refunds acknowledged, asked, payments refunded in the journal
    read_backs: Counter = dataclasses.field(default_factory=Counter)
    conservation: str = "not checked"
    holds: str = "not checked"
    controls: str = "off"  # account controls changed under load, checked from the journal
    controls_changed: Counter = dataclasses.field(default_factory=Counter)  # change -> acknowledged
    converged_s: float | None = None
    converged_after_last_fault_s: float | None = None
    audit: str = "not run"
    signed_heads: int = 0  # signed tree heads the audit checked against the journal
    serialization_retries: int = 0
    batches: int = 0
    batches_failed_serialization: int = 0
    batches_failed_other: int = 0
    run_s: float = 0.0
    drain_s: float = 0.0
    wall_s: float = 0.0
    violations: list = dataclasses.field(default_factory=list)
    forged: Counter = dataclasses.field(default_factory=Counter)  # junk messages published, by subject
    webhooks: str = "off"
    notes: list = dataclasses.field(default_factory=list)  # lines a topology adds (failover windows ...)

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        o = self.options
        faults = ", ".join(f"{k}={self.faults[k]}" for k in o.fault_kinds)
        timing = ", ".join(
            f"{k} {self.fault_seconds[k]:.2f}s" for k in o.fault_kinds if k in self.fault_seconds
        )
        recovery = ", ".join(
            f"{k} mean {self.recovery_seconds[k][0]:.2f}s max {self.recovery_seconds[k][1]:.2f}s"
            for k in o.fault_kinds if k in self.recovery_seconds
        )
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "none"
        retried = ", ".join(f"{k}={v}" for k, v in sorted(self.retried.items())) or "none"
        after = ", ".join(f"{k}={self.acknowledged_after_last.get(k, 0)}" for k in o.fault_kinds)
        failed_rate = self.batches_failed_serialization / self.batches if self.batches else 0.0
        retry_rate = self.serialization_retries / self.batches if self.batches else 0.0
        converged = "no" if self.converged_s is None else f"{self.converged_s:.2f} s"
        since_fault = "" if self.converged_after_last_fault_s is None or not sum(self.faults.values()) else (
            f" after the last write ({self.converged_after_last_fault_s:.2f} s after the last fault)"
        )
        return [
            f"seed {self.seed}; duration {o.duration_s:g} s; {o.api_processes} API processes;"
            f" {o.projectors} projector processes; {o.wallets} wallets;"
            f" {o.vendors} vendors; {o.workers} workers; fault interval {o.fault_interval_s:g} s",
            f"transfers attempted: {self.keys} keys, {self.requests} requests",
            "forged messages published: " + (", ".join(f"{k}={v}" for k, v in sorted(self.forged.items()))
                                             or ("none" if o.forger else "off")),
            f"acknowledged: {self.acknowledged} (replayed answers {self.replayed}; after the first fault"
            f" {self.acknowledged_after_first_fault}; after the last fault of each kind: {after})",
            "committed although the answer was lost (a replay of a key sent once), after: "
            + (", ".join(f"{k}={v}" for k, v in sorted(self.replayed_after.items())) or "none"),
            f"rejected by code: {rejected}",
            f"retried answers: {retried}",
            "read-backs: " + (", ".join(f"{k}={v}" for k, v in sorted(self.read_backs.items())) or "none"),
            f"faults injected: {faults} (mean duration: {timing or 'n/a'})",
            f"first acknowledgement after a fault ended: {recovery or 'n/a'}",
            f"lost {self.lost}, duplicated {self.duplicated}, phantom {self.phantom}, unresolved {self.unresolved},"
            f" negative {self.negative}, refunded above the payment {self.over_refunded}",
            f"vendor refunds: {self.refunds[0]} committed of {self.refunds[1]} asked, {self.refunds[2]} payments"
            " refunded",
            f"holds: {self.holds}",
            f"controls: {self.controls}",
            f"conservation {self.conservation}",
            f"projection converged in {converged}{since_fault}",
            f"audit: {self.audit}",
            f"webhooks: {self.webhooks}",
            f"committer: {self.batches} batches, {self.serialization_retries} serialization retries"
            f" ({retry_rate:.3f} per batch), {self.batches_failed_serialization} batches failed after all"
            f" retries ({failed_rate:.4%}), {self.batches_failed_other} batches failed otherwise (database down)",
            f"run {self.run_s:.1f} s, drain {self.drain_s:.1f} s, wall clock {self.wall_s:.1f} s",
            *self.notes,
            "violations: " + ("none" if self.ok else f"{len(self.violations)}"),
            *[f"  - {v}" for v in self.violations[:50]],
            "RESULT: " + ("ok" if self.ok else "FAILED"),
        ]


class Observer:
    """Progress lines stamped with the seconds since the start, and the violations of the report."""

    def __init__(self, report: Report, *, echo: bool) -> None:
        self.report = report
        self.echo = echo
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        if self.echo:
            print(f"[{time.monotonic() - self.started:7.2f}s] {message}", flush=True)

    def violation(self, message: str) -> None:
        self.report.violations.append(message)
        self.say(f"VIOLATION: {message}")
