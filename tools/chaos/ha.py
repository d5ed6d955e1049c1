"""The bank test on a highly available topology: `ledger chaos --topology ha`.

The same world, clients and checks as the single-node run, on the stand-in for production that
`tools/replication.py` builds: a PostgreSQL primary with a synchronous standby (one multi-host URL
with `target_session_attrs=read-write`, so every service finds the primary by itself) and a
3-node NATS JetStream cluster holding the `LEDGER` stream at 3 replicas. The database and NATS
faults become node failures:

- `primary_failover`: SIGKILL of the primary, promotion of the standby, a fresh standby rebuilt
  from the new primary with `pg_basebackup -R` and named in `synchronous_standby_names`;
- `nats_node_kill`: SIGKILL of one NATS node (the `LEDGER` stream's leader half of the time) and
  its restart, done when the stream's replicas are current again;

plus the API and projector kills of the single-node run. The report adds, per failover, the
window the clients saw (the first failed request after the kill to the first acknowledgement of
a request sent after it), p50 and max, and the throughput of the run.

Every `ledger` process the `Stack` starts runs here unchanged with the HA environment
(`HaStack.env`): a webhook worker added to `Stack.children` (issue 14) is covered as it lands.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import nats

from ledger import bus
from tools.chaos.faults import FaultInjector, Stack
from tools.chaos.options import Options
from tools.chaos.report import Observer, Report
from tools.chaos.workload import Workload
from tools.replication import NatsCluster, PostgresPair

STREAM_REPLICAS = 3
NATS_DOWN_S_MAX = 2.0
STREAM_HEAL_S_MAX = 30.0
STREAM_POLL_S = 0.2
NATS_ADMIN_TIMEOUT_S = 2.0


class HaStack(Stack):
    """The chaos `Stack` with a `PostgresPair` as `pg` and a `NatsCluster` as `nats`."""

    def __init__(self, options: Options, root: Path, log: Observer) -> None:
        super().__init__(options, root, log)
        self.pg = PostgresPair(root / "pg")
        self.nats = NatsCluster(root / "nats")

    def env(self, port: int | None = None) -> dict[str, str]:
        return {**super().env(port), "LEDGER_STREAM_REPLICAS": str(STREAM_REPLICAS)}


class HaWorkload(Workload):
    """The workload, noting when requests failed and when acknowledged ones were sent, for the
    unavailability windows."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failed_at: list[float] = []
        self.acked: list[tuple[float, float]] = []  # (sent, answered)

    def _answered(self, result, api_name: str, status: int, raw: bytes, replayed: bool, sent: float) -> bool:
        definitive = super()._answered(result, api_name, status, raw, replayed, sent)
        if status == 201:
            self.acked.append((sent, time.monotonic()))
        elif not definitive:
            self.failed_at.append(time.monotonic())
        return definitive


@dataclass
class Failover:
    started: float
    promoted_s: float
    in_sync_s: float


class HaFaultInjector(FaultInjector):
    """The node failures of the HA topology, besides the inherited API and projector kills."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failovers: list[Failover] = []

    async def _fault_primary_failover(self, rng: random.Random) -> str:
        pair: PostgresPair = self.stack.pg
        dead = pair.primary.node_name
        started = time.monotonic()
        times = await asyncio.to_thread(pair.failover)
        self.failovers.append(Failover(started, times.promoted_s, times.standby_in_sync_s))
        return (f"SIGKILL primary {dead}; {pair.primary.node_name} promoted at {times.promoted_s:.2f}s,"
                f" {pair.standby.node_name} rebuilt and in sync at {times.standby_in_sync_s:.2f}s")

    async def _fault_nats_node_kill(self, rng: random.Random) -> str:
        cluster: NatsCluster = self.stack.nats
        leader = await self._stream_state(cluster)
        by_name = {node.server_name: node for node in cluster.nodes}
        node = by_name.get(leader[0]) if leader and rng.random() < 0.5 else None
        node = node or rng.choice(cluster.nodes)
        was_leader = leader is not None and node.server_name == leader[0]
        down_s = rng.uniform(0.0, NATS_DOWN_S_MAX)
        cluster.restarting = True
        try:
            await asyncio.to_thread(node.kill)
            await asyncio.sleep(down_s)
            await asyncio.to_thread(node.start)
        finally:
            cluster.restarting = False
        healed = await self._wait_stream_healed(cluster)
        return (f"SIGKILL NATS {node.server_name}{' (stream leader)' if was_leader else ''}, down {down_s:.2f}s;"
                f" stream {'current on 3 replicas' if healed else 'NOT healed'}")

    async def _wait_stream_healed(self, cluster: NatsCluster) -> bool:
        deadline = time.monotonic() + STREAM_HEAL_S_MAX
        while time.monotonic() < deadline:
            state = await self._stream_state(cluster)
            if state is not None and state[1]:
                return True
            await asyncio.sleep(STREAM_POLL_S)
        self.log.say(f"NOTICE: the LEDGER stream's replicas not all current {STREAM_HEAL_S_MAX:g}s after a restart")
        return False

    @staticmethod
    async def _stream_state(cluster: NatsCluster) -> tuple[str, bool] | None:
        """(leader's name, whether both followers are current), or None while nobody can tell."""
        with contextlib.suppress(Exception):
            client = await nats.connect(cluster.url.split(","), allow_reconnect=False,
                                        connect_timeout=NATS_ADMIN_TIMEOUT_S, error_cb=_quiet)
            try:
                info = await client.jetstream(timeout=NATS_ADMIN_TIMEOUT_S).stream_info(bus.STREAM)
            finally:
                await client.close()
            replicas = info.cluster.replicas or []
            current = len(replicas) == STREAM_REPLICAS - 1 and all(r.current and not r.offline for r in replicas)
            return info.cluster.leader, current
        return None


async def _quiet(error: Exception) -> None:
    """A node dying under an admin query is expected here; nats-py would print it."""


async def audit_by_command(checks, stack: HaStack, report: Report) -> None:
    """`ledger audit` as an operator runs it after the failovers: the command, given the same
    multi-host URL as the services, which reaches the promoted primary by itself."""
    in_process = report.audit
    await checks._audit_command()
    report.audit = f"{in_process}; {report.audit} on {stack.pg.primary.node_name}, the primary after" \
                   f" {stack.pg.failovers} failovers"


def failover_windows(failovers: list[Failover], failed_at: list[float], acked: list[tuple[float, float]],
                     ends: list[float]) -> list[float]:
    """Per failover, seconds from the first request that failed after the kill (before the next
    fault) to the first acknowledgement of a request sent after that failure."""
    failed_at = sorted(failed_at)
    acked = sorted(acked)
    sent = [s for s, _ in acked]
    windows = []
    for failover, next_start in zip(failovers, ends):
        first = bisect.bisect_left(failed_at, failover.started)
        if first == len(failed_at) or failed_at[first] >= next_start:
            windows.append(0.0)  # no client saw it
            continue
        t0 = failed_at[first]
        later = [answered for s, answered in acked[bisect.bisect_left(sent, t0):]]
        if later:
            windows.append(min(later) - t0)
    return windows


def summarize(report: Report, workload: HaWorkload, injector: HaFaultInjector, stack: HaStack) -> None:
    """The HA lines of the report: failover windows and steps, and the throughput."""
    payments = report.acknowledged
    rate = payments / report.run_s if report.run_s else 0.0
    report.notes.append(f"throughput: {rate:.1f} acknowledged payments/s ({payments} in {report.run_s:.1f} s),"
                        f" {report.requests / report.run_s if report.run_s else 0:.1f} requests/s")
    report.notes.append(f"topology ha: PostgreSQL primary {stack.pg.primary.node_name} (after {stack.pg.failovers}"
                        f" failovers) + synchronous standby {stack.pg.standby.node_name}; NATS"
                        f" {len(stack.nats.nodes)} nodes, stream replicas {STREAM_REPLICAS}")
    if not injector.failovers:
        return
    starts = [f.started for f in injector.faults]
    ends = []
    for failover in injector.failovers:
        later = [s for s in starts if s > failover.started]
        ends.append(min(later) if later else float("inf"))
    windows = failover_windows(injector.failovers, workload.failed_at, workload.acked, ends)
    promoted = [f.promoted_s for f in injector.failovers]
    in_sync = [f.in_sync_s for f in injector.failovers]
    report.notes.append(
        f"failover unavailability (first failed request -> first acknowledgement): {len(windows)} failovers,"
        f" p50 {statistics.median(windows):.2f} s, max {max(windows):.2f} s" if windows else
        "failover unavailability: no window measured")
    report.notes.append(f"failover steps from the SIGKILL: promoted p50 {statistics.median(promoted):.2f} s"
                        f" max {max(promoted):.2f} s; new standby in sync p50 {statistics.median(in_sync):.2f} s"
                        f" max {max(in_sync):.2f} s")
    report.notes.append("failover windows (s): " + " ".join(f"{w:.2f}" for w in windows))
