"""The tests' fixtures live in plugins (tests/plugins/), registered here: the real servers, the
stack on them, webhook receivers, journals to tamper with, and helpers such as `eventually`.

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
]
