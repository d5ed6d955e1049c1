"""The bank test under faults, short: the chaos harness (`tools/chaos/`) in-process, on its own
PostgreSQL and NATS, with two API processes, two projector processes, a forger publishing junk
on every ledger subject, a webhook receiver on every vendor account and a `ledger webhooks`
process, and every kind of fault (SIGKILL of the webhook worker included) at least once.

`make chaos` runs the long version (300 s, twenty faults of each kind and more).
"""

from __future__ import annotations

import pytest

from tests.plugins.chaos import SHORT_RUN
from tools import chaos

pytestmark = pytest.mark.slow  # the chaos run: its own servers and child processes under faults


async def test_every_invariant_holds_under_every_kind_of_fault(tmp_path):
    options = chaos.Options(seed=20240611, data_dir=tmp_path / "chaos", **SHORT_RUN)
    report = await chaos.run(options)
    summary = "\n".join(report.lines())
    print(summary)

    assert report.ok, summary
    assert report.lost == report.duplicated == report.phantom == report.unresolved == report.negative == 0, summary
    assert report.conservation.startswith("ok"), summary
    assert report.converged_s is not None, summary
    assert report.audit.startswith(("ok", "SKIPPED")), summary
    for kind in chaos.FAULT_KINDS:
        assert report.faults[kind] >= 1, summary
        assert report.acknowledged_after_last.get(kind, 0) > 0, summary
    assert report.acknowledged_after_first_fault > 0, summary
    assert report.rejected["422 insufficient_funds"] > 0, summary
    assert sum(report.forged.values()) > 0, summary
    assert report.webhooks.startswith("ok"), summary
    # Controls changed under load, and no entry broke the ones in force at its position.
    assert report.controls.startswith("ok") and sum(report.controls_changed.values()) > 0, summary
    # Heads were signed all through the faults, and the audit found each one a prefix of the
    # journal that survived them: no head was signed over an entry a fault took back.
    assert report.signed_heads > 0, summary
