"""The tests' fixtures live in plugins (tests/plugins/), registered here: the real servers, the
stack on them, webhook receivers, journals to tamper with, bad input's checks, `ledger` child
processes; their asserts are rewritten as tests' are. `eventually` (tests/plugins/helpers.py) is
re-exported here.

Tests sit in one folder per feature (tests/ledger, tests/api, ...). A test imports helpers from a
plugin module (or `eventually` from here, as older tests do), never from another test module.
"""

from __future__ import annotations

from tests.plugins.helpers import eventually

__all__ = ["eventually"]  # re-exported: tests import it from here

pytest_plugins = [
    "tests.plugins.servers",
    "tests.plugins.stack",
    "tests.plugins.receivers",
    "tests.plugins.journals",
    "tests.plugins.problems",
    "tests.plugins.children",
    "tests.plugins.chaos",
    "tests.plugins.browser",
    "tests.plugins.console",
]
