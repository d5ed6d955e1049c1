"""Background tasks are stopped even when a cancel is lost, and a stop never waits forever."""

from __future__ import annotations

import asyncio
import logging

from ledger.tasks import cancel_all


async def _loses_one_cancel(swallowed: list[int]) -> None:
    """A loop like a readiness probe's: the first cancel comes out of a failed round (as a lost
    cancel does on Python 3.11), and the loop goes on to its next sleep."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(1)


async def test_a_task_that_lost_its_cancel_is_cancelled_again_and_ends():
    swallowed: list[int] = []
    task = asyncio.create_task(_loses_one_cancel(swallowed))
    await asyncio.sleep(0)  # let it reach its sleep
    await cancel_all([task], timeout_s=5)
    assert swallowed == [1]
    assert task.cancelled()


async def test_a_task_deaf_to_every_cancel_is_named_and_left_after_the_bound(caplog):
    deaf_until_released = [True]

    async def deaf() -> None:
        while deaf_until_released[0]:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(deaf(), name="deaf-probe")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="ledger.tasks"):
        await cancel_all([task], timeout_s=0.2)
    assert not task.done()
    assert "deaf-probe" in caplog.text
    deaf_until_released[0] = False  # the test's own cleanup: let it end at its next wake-up
    task.cancel()
    await asyncio.wait_for(task, timeout=5)
