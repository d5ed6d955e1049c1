# The two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test check bench chaos chaos-ha install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ledger dev

# Two workers (pytest-xdist), each with its own PostgreSQL and NATS: most tests wait on a server or
# a timer, so two of them share 2 cores well (519 s serial, 316 s with two, same machine and load).
# TEST_WORKERS=0 runs in one process, as when debugging with -x or pdb.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The inner loop: every test but those marked slow (the chaos, HA, replication and fuzz suites and
# the ones that run `ledger` child processes). `make test`, what CI runs, runs them all.
check: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

# The bench extra (matplotlib for the chart) on top of the test one. BENCH_ARGS=--quick skips the
# million-entry journal; `ledger bench --help` lists the rest.
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(VENV)/bin/ledger bench $(BENCH_ARGS)

chaos: $(STAMP)
	$(VENV)/bin/ledger chaos --duration 300

# Node failures: a primary with a synchronous standby and a 3-node NATS cluster (docs/operations.md).
chaos-ha: $(STAMP)
	$(VENV)/bin/ledger chaos --topology ha --duration 300 --min-faults 10

clean:
	rm -rf .ledger $(VENV) build *.egg-info
