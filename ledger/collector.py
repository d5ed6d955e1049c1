"""The cyclic garbage collector: settled in a long-running service, paused for the audit's replay.

The services that settle it are the API and the webhook worker.

What start-up built (modules, routes, pools, clients) lives as long as the process: `settled`
moves it out of the collector's generations, so that full collections walk only what the work
left behind, and lets young collections run less often. A request or an attempt allocates a few
hundred objects, almost none of them in cycles, so at CPython's default (700) the collector ran
several times per request's worth of work; the rare cycles still go within a few dozen requests.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_THRESHOLD = 20_000  # young objects allowed before a collection; CPython's default is 700


@contextlib.contextmanager
def settled() -> Iterator[None]:
    """Freeze what exists now and raise the young threshold while the block runs; undone on the way
    out, for a service that ran inside another process (`ledger dev`, the tests)."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off while the block runs, as it was after. The audit's replay makes no
    reference cycles, but every 700 allocations the collector rescans the page of entries alive:
    measured, 40% of the replay's CPU. Its worker processes keep it off for good (`audit.pool._join`)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
