"""The bank test on the highly available topology, short: a PostgreSQL primary with a synchronous
standby, a 3-node NATS JetStream cluster (the `LEDGER` stream at 3 replicas), two API processes,
two projectors and the forger, under failovers, NATS node kills and process kills
(`tools/chaos/ha.py`). Every failover SIGKILLs the primary, promotes the standby and rebuilds a
new one; the services find the new primary through their multi-host URL by themselves.

`ledger chaos --topology ha --duration 300 --min-faults 10` is the long version.
"""

from __future__ import annotations

import pytest

from tests.plugins.chaos import SHORT_RUN
from tools import chaos

pytestmark = pytest.mark.slow  # the chaos run on the HA topology: failovers and NATS node kills


async def test_no_acknowledged_transfer_is_lost_across_failovers_and_nats_node_kills(tmp_path):
    options = chaos.Options(seed=20261126, data_dir=tmp_path / "chaos", topology="ha",
                            **{**SHORT_RUN, "min_faults_per_kind": 2})
    report = await chaos.run(options)
    summary = "\n".join(report.lines())
    print(summary)

    assert report.ok, summary
    assert report.lost == report.duplicated == report.phantom == report.unresolved == report.negative == 0, summary
    assert report.conservation.startswith("ok"), summary
    assert report.converged_s is not None, summary
    assert report.audit.startswith("ok") and "ok (ledger audit exited 0) on pg_" in report.audit, summary
    for kind in chaos.HA_FAULT_KINDS:
        assert report.faults[kind] >= 2, summary
        assert report.acknowledged_after_last.get(kind, 0) > 0, summary
    assert any(line.startswith("failover unavailability") and "p50" in line for line in report.notes), summary
    assert sum(report.forged.values()) > 0, summary
    assert report.webhooks.startswith("ok"), summary
    # Heads were signed all through the faults, and the audit found each one a prefix of the
    # journal that survived them: no head was signed over an entry a fault took back.
    assert report.signed_heads > 0, summary
