"""The short chaos run the bank tests share (`tools/chaos/`): `make chaos` is the long one."""

from __future__ import annotations

SHORT_RUN = dict(
    duration_s=22.0,
    api_processes=2,
    projectors=2,
    forger=True,
    wallets=12,
    vendors=3,
    workers=24,
    fault_interval_s=1.0,
    quiet_s=3.0,
    min_faults_per_kind=1,
    overrun_s_max=60.0,
    drain_s=30.0,
)
