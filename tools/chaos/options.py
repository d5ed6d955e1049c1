"""The run's options, its named limits, and the records the workload and the faults leave behind."""

from __future__ import annotations

import dataclasses
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CURRENCY = "USD"
OTHER_CURRENCY = "EUR"
FAULT_KINDS = ("api_kill", "projector_kill", "nats_restart", "postgres_restart", "webhooks_kill")
# `--topology ha` (`tools/chaos/ha.py`): the database and NATS faults are node failures instead.
HA_FAULT_KINDS = ("api_kill", "projector_kill", "primary_failover", "nats_node_kill")
TOPOLOGIES = ("single", "ha")
# What the controls changed during the run (`tools.chaos.controls`) refuse: a frozen payer, a capped payee.
CONTROL_REJECTIONS = frozenset({"account_frozen", "balance_limit_exceeded"})
EXPECTED_REJECTIONS = frozenset({"insufficient_funds", "same_account", "account_not_found", "currency_mismatch",
                                 "refund_exceeds_transfer", *CONTROL_REJECTIONS})
# Answers that say "not now, try again": the key is retried, with the same body.
RETRIED_STATUSES = frozenset({429, 503})

PROCESS_READY_S_MAX = 30.0
PROCESS_STOP_S_MAX = 20.0
SUPERVISE_INTERVAL_S = 0.25
SCRAPE_INTERVAL_S = 2.0
CONVERGE_POLL_S = 0.1
AUDIT_S_MAX = 120.0
BACKOFF_S_MIN = 0.02
BACKOFF_S_MAX = 1.0
SMALL_AMOUNT_MAX = 1000
# Kinds of payment a client makes, by share of all payments (the rest go to other wallets).
SHARE_SAME_ACCOUNT = 0.02
SHARE_UNKNOWN_TARGET = 0.02
SHARE_OTHER_CURRENCY = 0.01
SHARE_VENDOR = 0.30
SHARE_LARGE = 0.15  # of wallet-to-wallet payments: up to twice the funding, often unaffordable
# After an acknowledged payment, how often the client reads its write back: its wallet from the
# write side (never stale), or the vendor's verification from the projection (read-your-writes).
SHARE_READ_BACK = 0.05
# How often a client sends the same request twice at once (an impatient retry, a double click).
SHARE_TWIN = 0.03
# Of acknowledged payments to a vendor, the share its owner partly refunds (half of it), and of
# those the share refunded twice at once with two keys (60% each: at most one may commit).
SHARE_REFUNDED = 0.2
SHARE_REFUND_RACE = 0.25
# The admin pays the vendors' takings back to the wallets at this pace, or in a long run the
# money ends up with the vendors and almost every payment is refused for insufficient funds.
REFUND_INTERVAL_S = 0.2
READ_BACK_WAIT_MS = 2000
FORGER_RATE_PER_S = 20.0  # junk messages the forger publishes per second, at most


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    duration_s: float = 300.0
    seed: int = 0
    api_processes: int = 2
    # Projector processes sharing one checkpoint: each entry must still be applied exactly once.
    projectors: int = 2
    # An attacker publishing junk on every ledger subject during the run (`tools/chaos/forger.py`).
    forger: bool = True
    # A webhook receiver on every vendor account and a `ledger webhooks` process, SIGKILLed as a
    # fault kind of its own: every payment to a vendor must reach the receiver, correctly signed.
    webhooks: bool = True
    # An admin freezing, capping and extending credit to accounts during the run; afterwards the
    # journal alone is replayed to show no entry broke the controls in force (`tools/chaos/controls.py`).
    controls: bool = True
    wallets: int = 20
    vendors: int = 3
    workers: int = 32
    faults: bool = True
    # Mean gap between one fault's end and the next one's start (uniform in 0.5x..1.5x).
    fault_interval_s: float = 1.5
    # No fault starts in the last `quiet_s` of the run, so recovery is seen under traffic.
    quiet_s: float = 5.0
    # Faults go on past `duration_s - quiet_s` (and traffic past `duration_s`) until every kind was
    # injected this often, for at most `overrun_s_max` more seconds.
    min_faults_per_kind: int = 1
    overrun_s_max: float = 120.0
    # After the run, how long pending keys may keep retrying before they count as unresolved.
    drain_s: float = 60.0
    converge_s: float = 10.0
    funding_per_wallet: int = 1_000_000
    server_request_timeout_ms: int = 5_000
    client_timeout_s: float = 15.0
    data_dir: Path | None = None
    keep_data: bool = False
    echo: bool = True
    # "single": one PostgreSQL, one NATS; "ha": a primary and a synchronous standby, 3 NATS nodes.
    topology: str = "single"

    def __post_init__(self) -> None:
        assert self.duration_s > 0 and self.api_processes >= 1 and self.projectors >= 1 and self.wallets >= 2 and self.vendors >= 1
        assert self.workers >= 1 and self.fault_interval_s > 0 and self.drain_s > 0
        assert self.client_timeout_s * 1000 > self.server_request_timeout_ms, "the server must answer first"
        assert self.topology in TOPOLOGIES, self.topology

    @property
    def fault_kinds(self) -> tuple[str, ...]:
        return HA_FAULT_KINDS if self.topology == "ha" else FAULT_KINDS


@dataclasses.dataclass
class KeyResult:
    """One idempotency key: every attempt made with it, and the answer it ended with."""

    principal_id: str
    key: str
    body: dict
    purpose: str  # "funding", "payment", "refund" (the treasurer's) or "vendor_refund" (POST .../refunds)
    status: int | None = None  # the definitive status; None while (or if it stayed) unresolved
    code: str | None = None
    transfer_id: str | None = None
    position: int = 0
    answered_at: float = 0.0
    attempts: int = 0
    copies: int = 1
    failures: set = dataclasses.field(default_factory=set)  # how the retried attempts ended
    ids_seen: set = dataclasses.field(default_factory=set)
    path: str = "/v1/transfers"
    # The journal entry a 201 must be: the body for a transfer; the reversed original for a refund.
    entry: dict = dataclasses.field(default_factory=dict)
    refund_of: str | None = None

    def __post_init__(self) -> None:
        if not self.entry:
            self.entry = self.body


@dataclasses.dataclass
class Fault:
    kind: str
    detail: str
    started: float
    ended: float
