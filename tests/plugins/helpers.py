"""Helpers that tests import: waiting for a condition without sleeping as synchronisation, and\nthe paths the contract spells the same way everywhere."""

from __future__ import annotations

import asyncio
import time


async def eventually(check, *, timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "condition"):
    """Poll `check` (async, returns truthy when done) until it holds or the deadline passes."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


def poll_until(check, *, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):
    """`eventually` for blocking code (a child process's log, a URL): poll `check` until it returns
    something truthy, raise AssertionError at the deadline. `check` may raise AssertionError itself
    to stop early (a child that exited)."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        time.sleep(interval_s)
    return result


def verification_path(vendor_account: str, transfer_id: str) -> str:
    """The vendor's verification of one payment (CONTRACT "Verifying a payment")."""
    return f"/v1/vendors/{vendor_account}/transfers/{transfer_id}/verification"
