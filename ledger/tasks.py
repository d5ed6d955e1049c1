"""Stopping background tasks: cancelled again until they end, since one cancel can be lost"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

# How often a task still running is cancelled again, and for how long in all. A cancel can be lost
# on Python 3.11: one that lands as an `asyncio.timeout` or psycopg's pool wait expires comes out
# as a TimeoutError, which a probe's `except Exception` then takes for a failed round, and its loop
# goes on sleeping. Seen: an API whose stop waited forever on its readiness probe.
RECANCEL_INTERVAL_S = 0.5
STOP_TASKS_S_MAX = 10.0


async def cancel_all(tasks: list[asyncio.Task], *, timeout_s: float = STOP_TASKS_S_MAX) -> None:
    """Cancel `tasks` and wait for them to end, cancelling again those a cancel missed; past
    `timeout_s` the ones still running are logged and left behind, never waited on forever."""
    pending = {task for task in tasks if not task.done()}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pending:
        for task in pending:
            task.cancel()
        left_s = deadline - asyncio.get_running_loop().time()
        if left_s <= 0:
            log.error("tasks still running after %.0f s of cancelling: %s", timeout_s,
                      ", ".join(sorted(task.get_name() for task in pending)))
            return
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_INTERVAL_S, left_s))
    # Retrieve each ending (a cancel, or what the task raised) so none is reported as never retrieved.
    await asyncio.gather(*tasks, return_exceptions=True)
