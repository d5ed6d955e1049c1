"""The bulk path's figures in the bench table: items, not requests, and ratios from whole phases.
Pure functions of `tools.bulk_bench`, no servers."""

from __future__ import annotations

from tools import bench, bulk_bench
from tools.bulk_load import BulkRecords


def _records(**overrides) -> BulkRecords:
    fields = dict(mode="closed", batch_mode="independent", batch=100, concurrency=16, rate_per_s=0.0, duration_s=2.0,
                  window_start_unix=0.0, window_end_unix=2.0, due_s=[0.0, 0.5, 1.9], latency_s=[0.1, 0.2, 0.3],
                  status=[200, 200, 503], committed=[100, 98, 0], item_status={"201": 198, "422": 2, "503": 100})
    fields.update(overrides)
    return BulkRecords(**fields)


def _phase(name: str, rate: float, postgres_cores: float = 0.5) -> bench.Phase:
    phase = bench.Phase(name=name, scenario="bulk", mode="closed", concurrency=16, rate_per_s=0.0, duration_s=20.0)
    phase.throughput_per_s, phase.cpu_cores = rate, {"postgres": postgres_cores, "api": 0.25}
    return phase


def test_throughput_counts_committed_items_of_batches_answered_inside_the_window():
    phase = _phase("bulk-1", 0.0)
    bulk_bench.summarize(phase, _records())
    # The third batch was answered at 2.2 s, after the 2 s window: its items do not count.
    assert phase.committed == 198
    assert phase.throughput_per_s == 99.0
    assert phase.errors == {"422": 2, "503": 100}
    assert phase.latency_ms["p50"] == 200.0


def test_ratios_come_from_the_alternated_phases_of_each_mode():
    phases = {"bulk-1": _phase("bulk-1", 5000.0), "bulk-atomic-1": _phase("bulk-atomic-1", 4000.0),
              "bulk-2": _phase("bulk-2", 3000.0), "bulk-atomic-2": _phase("bulk-atomic-2", 4400.0)}
    bulk = bulk_bench.Bulk(phases=phases)
    pgbench = bench.Pgbench(tps=4000.0, cpu_cores={"postgres": 1.0})  # 250 µs per transaction
    rows = {row.figure: row for row in bulk_bench._throughput_rows(bulk, pgbench)}
    assert rows["bulk ÷ pgbench"].measured == "1.00×" and rows["bulk ÷ pgbench"].met
    assert rows["atomic ÷ independent (batches of 100, alternated)"].measured.startswith("1.05×")
    history = bulk_bench.history(bulk, pgbench)
    assert history["bulk_ratio"] == 1.0 and history["atomic_ratio"] == 1.05
    # CPU per transfer: the mean of the two independent phases' (100 + 50 µs and 167 + 83 µs).
    assert round(history["bulk_server_cpu_us"]) == 200


def test_index_entries_count_every_index_of_an_insert_and_of_a_non_hot_update():
    profile = bulk_bench._profile(
        [("INSERT INTO postings (position) SELECT 1", 10, 5.0, 2000, 100_000),
         ("UPDATE balances SET balance = 1", 10, 1.0, 500, 10_000),
         ("SELECT 1", 20, 1.0, 20, 0)],
        transfers=1000, batches=10,
        before={"postings": (3, 0, 0, 0), "balances": (1, 0, 0, 0)},
        after={"postings": (3, 2000, 0, 0), "balances": (1, 0, 500, 400)})
    assert profile["tables"]["postings"] == {"rows": 2.0, "indexes": 3, "hot_share": None}
    assert profile["tables"]["balances"]["hot_share"] == 0.8
    assert abs(bulk_bench.index_entries_per_transfer(profile) - (6.0 + 0.5 * 0.2)) < 1e-9
    assert profile["statements_per_batch"] == 4.0
