"""The bench's headline: taken from the median of the same-condition uniform phases, one whole
phase (its throughput and its CPU together). Pure functions of `tools.bench`, no servers."""

from __future__ import annotations

from tools import bench


def _phase(name: str, rate: float, api_cores: float) -> bench.Phase:
    return bench.Phase(name=name, scenario="uniform", mode="closed", concurrency=128, rate_per_s=0.0, duration_s=20.0,
                       committed=int(rate * 20), throughput_per_s=rate, latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0},
                       cpu_cores={"api": api_cores, "postgres": 0.2})


def _phases(first: float, on_1: float, on_2: float) -> dict[str, bench.Phase]:
    return {"uniform": _phase("uniform", first, 0.40), "uniform-50%": _phase("uniform-50%", first / 2, 0.3),
            "hot": _phase("hot", 1500.0, 0.3), "uniform-tree-on-1": _phase("uniform-tree-on-1", on_1, 0.45),
            "uniform-tree-on-2": _phase("uniform-tree-on-2", on_2, 0.50)}


def test_the_headline_is_the_median_phase_whole():
    phases = _phases(1164.0, 1825.0, 1680.0)
    median = bench.median_uniform(phases)
    assert median.name == "uniform-tree-on-2"
    rows = {row.figure: row for row in bench.table_rows(phases, bench.Pgbench(tps=5000.0, cpu_cores={"postgres": 1.0}),
                                                        None, {"api": 70_000})}
    headline = rows["uniform ÷ pgbench (median uniform phase)"]
    assert headline.measured == f"{1680.0 / 5000.0:.2f}×"
    assert rows["uniform ÷ pgbench (first uniform phase)"].measured == f"{1164.0 / 5000.0:.2f}×"
    # The CPU row is the median phase's own: its cores over its own throughput.
    cpu = rows["server CPU µs per transfer (uniform-tree-on-2)"].measured
    assert cpu.startswith(f"{(0.50 + 0.2) / 1680.0 * 1e6:.0f} µs")


def test_without_the_follower_phases_the_first_uniform_phase_is_the_headline():
    phases = _phases(1164.0, 1825.0, 1680.0)
    del phases["uniform-tree-on-2"]
    assert bench.median_uniform(phases) is phases["uniform"]
    rows = {row.figure for row in bench.table_rows(phases, bench.Pgbench(tps=5000.0), None, {})}
    assert "uniform ÷ pgbench" in rows
