"""The exit codes of every `ledger` command, declared once (CONTRACT.md "Command line")

The commands that return them live in `cli`, `audit` and `proofs`, and all three may import the
shared base; the README's table of exit codes says the same.
"""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    OK = 0  # done (`ledger audit`: every check holds)
    CHECK_FAILED = 1  # a check failed: the audit found a broken invariant; `ledger checkpoint`: nothing to sign
    USAGE = 2  # usage or configuration error: a bad option, or a setting that does not parse or is out of range
    UNREACHABLE = 3  # a dependency (the database, NATS) could not be reached
