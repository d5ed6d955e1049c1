"""Account controls under load: freezes, caps and credit lines changed while the payments race.

An admin task changes one account's controls every `CONTROL_INTERVAL_S` through whichever API
process answers (each change one `account` journal entry), and after the run the journal alone is
replayed by the audit's own pure replay: no entry may break the controls in force at its
position (`controls_violations`). Caps go on wallets only, so that a capture (whose planned
outcome the hold checks judge) is never refused by one; freezes and credit lines go on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter

import aiohttp
import psycopg

from audit import Replay
from ledger import store
from tools.chaos.options import RETRIED_STATUSES, SMALL_AMOUNT_MAX

CONTROL_INTERVAL_S = 0.25
CREDIT_LINE_MAX = 3 * SMALL_AMOUNT_MAX  # the deepest credit line given, in minor units
JOURNAL_PAGE_ENTRIES = 5_000
VIOLATIONS_REPORTED_MAX = 10


def _change(rng: random.Random, *, wallet: bool, funding: int) -> tuple[str, dict]:
    """One change, named, with its PATCH body: a freeze is lifted as often as it is made."""
    choices = [
        ("freeze", {"status": "frozen"}), ("unfreeze", {"status": "active"}), ("unfreeze", {"status": "active"}),
        ("credit line", {"min_balance": -rng.randint(1, CREDIT_LINE_MAX)}), ("no credit", {"min_balance": 0}),
    ]
    if wallet:
        choices += [("cap", {"max_balance": rng.randint(0, 2 * funding)}), ("no cap", {"max_balance": None})]
    return rng.choice(choices)


class Controller:
    """The admin changing controls during the run, and what was acknowledged."""

    def __init__(self, workload) -> None:
        self.w = workload
        self.changes: Counter = Counter()  # name -> acknowledged
        self.refused: Counter = Counter()  # "status code" -> count

    async def run(self) -> None:
        rng = random.Random(f"{self.w.o.seed}/controls")
        wallets = [wallet for _, _, wallet in self.w.world.clients]
        accounts = [(wallet, True) for wallet in wallets] + [(vendor, False) for vendor in self.w.world.vendor_accounts]
        while not self.w.stopped.is_set():
            await asyncio.sleep(CONTROL_INTERVAL_S)
            account, is_wallet = rng.choice(accounts)
            name, body = _change(rng, wallet=is_wallet, funding=self.w.o.funding_per_wallet)
            status, code = await self._patch(rng, account, body)
            if status == 200:
                self.changes[name] += 1
            elif status is not None:
                self.refused[f"{status} {code}"] += 1
                self.w.log.violation(f"control change {body} of {account} answered {status} {code}")

    async def _patch(self, rng: random.Random, account: str, body: dict) -> tuple[int | None, str | None]:
        """Until a definitive answer or the drain deadline; a change repeated after a lost answer
        sets the same values again (one more account entry, nothing else)."""
        attempt = 0
        while time.monotonic() < self.w.final_deadline:
            apis = self.w.stack.apis
            api = apis[attempt % len(apis)]
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.w.stack.session.patch(
                        api.url + f"/v1/accounts/{account}", json=body,
                        headers={"Authorization": f"Bearer {self.w.stack.admin_token}"},
                        timeout=aiohttp.ClientTimeout(total=self.w.o.client_timeout_s)) as reply:
                    answer = await reply.json(content_type=None)
                    if reply.status not in RETRIED_STATUSES:
                        return reply.status, (answer or {}).get("code") if reply.status != 200 else None
            attempt += 1
            await self.w.backoff(rng, attempt)
        return None, None

    def line(self) -> str:
        made = ", ".join(f"{k}={v}" for k, v in sorted(self.changes.items())) or "none"
        return f"control changes acknowledged: {made}"


async def controls_violations(database_url: str) -> tuple[int, list[str]]:
    """(account entries, what broke the controls in force): the journal replayed, page by page,
    by the audit's pure `Replay`, keeping only its `controls` findings. Reads nothing but the
    journal and the accounts' kinds."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        replay = Replay(await store.account_kinds(conn))
        account_entries, after = 0, 0
        while True:
            page = await store.entries_after(conn, after, JOURNAL_PAGE_ENTRIES)
            for entry in page:
                replay.feed(entry)
                account_entries += entry.kind == "account"
            if len(page) < JOURNAL_PAGE_ENTRIES:
                break
            after = page[-1].position
    found = next(check for check in replay.findings.results() if check.name == "controls")
    broken = [] if found.ok else [f"{found.failures} entries broke the controls in force; first: {found.first}"]
    return account_entries, broken[:VIOLATIONS_REPORTED_MAX]
