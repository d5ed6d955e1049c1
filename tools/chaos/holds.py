"""Holds in the bank test: wallets place holds for vendors and then capture part of them, void
them, race a capture against a void, or leave them to expire (short `expires_in_s`), through the
API processes under the same faults as the payments. Each step is sent with its own key until it
gets a definitive answer, like a payment.

`check_holds` judges the end state: every hold the service acknowledged is in the holds table
once, in exactly one state that agrees with the answers (a captured hold with the acknowledged
amount, a voided one, an expired one; never both of a racing capture and void), the journal
holds exactly one `hold` entry and at most one closing entry per hold, and each holding account
holds exactly the pending holds. Its balance effects feed the bank's conservation check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from typing import Any

import aiohttp

from tools.chaos.options import CURRENCY, RETRIED_STATUSES

HOLD_KINDS = frozenset({"hold", "capture", "void", "expire"})
# Plans, by share of the holds placed: the rest is captured in part.
SHARE_VOID = 0.25
SHARE_EXPIRE = 0.2
SHARE_RACE = 0.15
HOLD_AMOUNT_MAX = 40
EXPIRES_IN_S_SHORT = 2  # the holds left to expire
EXPIRES_IN_S_LONG = 600
HOLD_PAUSE_S = 0.05  # between one holder's holds
# After the drain, how long the holds left to expire may take to be released (the contract's 10 s,
# and the time a fault may have kept the sweepers from the database).
EXPIRY_WAIT_S = 30.0
EXPIRY_POLL_S = 0.25


@dataclasses.dataclass
class HoldRecord:
    key: str
    wallet: str
    vendor: str
    amount: int
    plan: str  # capture, void, race, expire
    hold_id: str | None = None
    placed: tuple[int, str | None] | None = None  # (status, code) of the placing
    steps: dict = dataclasses.field(default_factory=dict)  # kind -> (status, code, answer)
    captured: int = 0


class Holder:
    """Places holds and takes each through its plan; every answer is recorded for the checks."""

    def __init__(self, workload) -> None:
        self.w = workload
        self.records: list[HoldRecord] = []
        self.unexpected: Counter = Counter()

    async def run(self, index: int) -> None:
        rng = random.Random(f"{self.w.o.seed}/holder/{index}")
        number = 0
        world = self.w.world
        while not self.w.stopped.is_set():
            _, token, wallet = rng.choice(world.clients)
            vendor = rng.choice(world.vendor_accounts)
            draw = rng.random()
            plan = ("void" if draw < SHARE_VOID else "expire" if draw < SHARE_VOID + SHARE_EXPIRE
                    else "race" if draw < SHARE_VOID + SHARE_EXPIRE + SHARE_RACE else "capture")
            record = HoldRecord(f"hold-{index}-{number}", wallet, vendor, rng.randint(2, HOLD_AMOUNT_MAX), plan)
            self.records.append(record)
            number += 1
            await self._take(rng, record, token)
            await asyncio.sleep(HOLD_PAUSE_S)

    async def _take(self, rng: random.Random, record: HoldRecord, wallet_token: str) -> None:
        body = {"from_account_id": record.wallet, "to_account_id": record.vendor, "amount": record.amount,
                "currency": CURRENCY, "reference": record.key,
                "expires_in_s": EXPIRES_IN_S_SHORT if record.plan == "expire" else EXPIRES_IN_S_LONG}
        status, code, answer = await self._send(rng, "/v1/holds", wallet_token, record.key, body)
        record.placed = (status, code)
        if status != 201:
            if code not in ("insufficient_funds", "account_frozen", None):  # a freeze (`controls`) refuses it
                self.w.log.violation(f"hold {record.key} answered {status} {code}")
            return
        record.hold_id = answer["id"]
        if record.plan == "expire":
            return
        vendor_token = self.w.world.vendor_owners[record.vendor][1]
        steps = {
            "capture": lambda: self._send(rng, f"/v1/holds/{record.hold_id}/capture", vendor_token,
                                          record.key + "-capture", {"amount": record.amount // 2 + 1}),
            "void": lambda: self._send(random.Random(rng.random()), f"/v1/holds/{record.hold_id}/void", wallet_token,
                                       record.key + "-void", None),
        }
        kinds = ["capture", "void"] if record.plan == "race" else [record.plan]
        for kind, outcome in zip(kinds, await asyncio.gather(*(steps[k]() for k in kinds))):
            record.steps[kind] = outcome
            if outcome[0] == 201 and kind == "capture":
                record.captured = outcome[2]["captured_amount"]
            if outcome[0] not in (201, None) and outcome[1] != "hold_not_pending":
                self.w.log.violation(f"{kind} of hold {record.key} answered {outcome[0]} {outcome[1]}")

    async def _send(self, rng: random.Random, path: str, token: str, key: str,
                    body: Any) -> tuple[int | None, str | None, Any]:
        """One key until a definitive answer (201 or 4xx) or the drain deadline: (status, code, body)."""
        stack = self.w.stack
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
        index, attempt = rng.randrange(len(stack.apis)), 0
        while True:
            remaining = self.w.final_deadline - time.monotonic()
            if remaining <= 0:
                return None, None, None
            attempt += 1
            self.w.report.requests += 1
            try:
                async with stack.session.post(stack.apis[index].url + path, json=body, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=min(self.w.o.client_timeout_s,
                                                                                      remaining))) as reply:
                    status, answer = reply.status, await reply.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, ValueError):
                status, answer = None, None
            if status is not None and (status == 201 or (400 <= status < 500 and status not in RETRIED_STATUSES)):
                return status, (answer or {}).get("code") if status != 201 else None, answer
            index = (index + 1) % len(stack.apis)
            await self.w.backoff(rng, attempt)


async def wait_for_expiries(connect, records: list[HoldRecord]) -> None:
    """Until every hold left to expire is closed, or EXPIRY_WAIT_S."""
    ids = [r.hold_id for r in records if r.hold_id is not None and r.plan == "expire"]
    deadline = time.monotonic() + EXPIRY_WAIT_S
    while ids and time.monotonic() < deadline:
        async with await connect() as conn:
            row = await (await conn.execute(
                "SELECT count(*) FROM holds WHERE status = 'pending' AND id = ANY(%s::UUID[])", (ids,))).fetchone()
        if row[0] == 0:
            return
        await asyncio.sleep(EXPIRY_POLL_S)


def hold_deltas(holds: list) -> dict[str, int]:
    """What the holds did to each account, from their final rows (id, from, to, amount, status,
    captured_amount, reference), with the holding account as `holding:<currency>`."""
    deltas: Counter = Counter()
    for _, wallet, vendor, amount, status, captured, _ in holds:
        deltas[wallet] -= amount
        deltas["holding"] += amount
        if status != "pending":
            deltas["holding"] -= amount
            deltas[vendor] += captured
            deltas[wallet] += amount - captured
    return deltas


def check_holds(records: list[HoldRecord], holds: list, journal: list, holding_balance: int, log) -> str:
    """The checks of the module docstring; returns the report's line."""
    by_id = {row[0]: row for row in holds}
    entries: dict[str, Counter] = {}
    for row in journal:
        if row[7] in HOLD_KINDS:
            entries.setdefault(row[9], Counter())[row[7]] += 1
    known = {r.hold_id for r in records if r.hold_id is not None}
    unresolved = {r.key for r in records if r.placed is not None and r.placed[0] is None}
    states: Counter = Counter()
    for hold_id, kinds in entries.items():
        if kinds["hold"] != 1 or sum(kinds[k] for k in ("capture", "void", "expire")) > 1:
            log.violation(f"hold {hold_id} has entries {dict(kinds)}")
        if hold_id not in known and (by_id.get(hold_id, (None,) * 7)[6] not in unresolved):
            log.violation(f"hold {hold_id} is in the journal but was never acknowledged")
    for r in records:
        if r.hold_id is None:
            continue
        row = by_id.get(r.hold_id)
        if row is None:
            log.violation(f"acknowledged hold {r.key} is not in the holds table")
            continue
        status, captured = row[4], row[5]
        states[status] += 1
        closing = {"captured": "capture", "voided": "void", "expired": "expire"}.get(status)
        if closing is not None and entries.get(r.hold_id, Counter())[closing] != 1:
            log.violation(f"hold {r.key} is {status} without its {closing} entry")
        won = [kind for kind, outcome in r.steps.items() if outcome[0] == 201]
        if len(won) > 1:
            log.violation(f"hold {r.key}: both {won} were acknowledged")
        if "capture" in won and (status, captured) != ("captured", r.captured):
            log.violation(f"hold {r.key}: capture of {r.captured} acknowledged, the hold is {status} {captured}")
        if "void" in won and status != "voided":
            log.violation(f"hold {r.key}: void acknowledged, the hold is {status}")
        if r.plan == "expire" and status != "expired":
            log.violation(f"hold {r.key} was left to expire and is {status}")
    pending = sum(row[3] for row in holds if row[4] == "pending")
    if holding_balance != pending:
        log.violation(f"the holding account holds {holding_balance}, the pending holds {pending}")
    placed = sum(1 for r in records if r.hold_id is not None)
    return (f"{placed} placed of {len(records)} asked; " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
            + f"; holding account {holding_balance} = pending {pending}")
