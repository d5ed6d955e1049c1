"""Grow the journal fast with valid entries, bypassing the API: for the audit's tests and the benchmark.

Each batch is decided by `ledger.domain.decide_batch` on the state the committer reads (the
locked head, the touched accounts), exactly as a live write, and appended with COPY in the same
transaction, so the result is a journal the audit accepts. No events are published (the publisher cursor
moves with the head); a running projector reads seeded entries from the journal once it sees it is behind the
head. Run it as the migration role: the service roles may not write this way.

    ledger seed --database-url URL --entries N [--accounts 1000] [--batch 10000] [--hot-share 0.2]

`--hot-share S` sends that share of the payments to the first vendor account, so one account
gathers many entries (the statement benchmark's account: 0.2 of 1,000,000 entries puts 100,000
on it, since every second entry is a payment).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

from ledger import domain, store

SEED_AMOUNT_MAX = 10_000  # minor units one seeded transfer moves, at most
SEED_ACCOUNTS_MIN = 3  # one system account, at least one wallet and one vendor
SEED_BATCH_MAX = 100_000  # entries in one transaction, at most
# Seeded transfers are the admin moving money under a principal that does not exist, so nobody
# can ever repeat one: their keys only keep them apart inside a decision, and are not stored.
_SEED_PRINCIPAL = uuid.UUID(int=0)


@dataclass(frozen=True, slots=True)
class SeedAccounts:
    system: uuid.UUID
    wallets: list[uuid.UUID]
    vendors: list[uuid.UUID]


async def seed_journal(
    database_url: str, *, entries: int, accounts: int = 1000, currency: str = "USD", batch: int = 10_000,
    hot_share: float = 0.0, payment_metadata: Callable[[int], dict[str, str]] | None = None,
) -> SeedAccounts:
    """Append `entries` entries between `accounts` new accounts: a system account funds each
    wallet, and the wallet then pays a vendor the same amount, so no wallet ever goes negative.
    `hot_share` of the payments go to the first vendor account (`SeedAccounts.vendors[0]`), and
    payment n carries `payment_metadata(n)` (none by default; the search bench's order ids)."""
    assert entries >= 0, "entries must not be negative"
    assert 0.0 <= hot_share <= 1.0, "hot_share must be in 0..1"
    assert accounts >= SEED_ACCOUNTS_MIN, f"accounts must be at least {SEED_ACCOUNTS_MIN}"
    assert 1 <= batch <= SEED_BATCH_MAX, f"batch must be in 1..{SEED_BATCH_MAX}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        seeded = await _create_accounts(conn, accounts, currency)
        plan = _transfers(seeded, currency, hot_share, payment_metadata or (lambda n: {}))
        for start in range(0, entries, batch):
            async with conn.transaction():
                await _append_batch(conn, list(itertools.islice(plan, min(batch, entries - start))))
    return seeded


async def _create_accounts(conn: psycopg.AsyncConnection, count: int, currency: str) -> SeedAccounts:
    wallet_count = (count - 1) // 2
    seeded = SeedAccounts(
        system=uuid.uuid4(),
        wallets=[uuid.uuid4() for _ in range(wallet_count)],
        vendors=[uuid.uuid4() for _ in range(count - 1 - wallet_count)],
    )
    rows = [(seeded.system, "system", currency, "seed funding")]
    rows += [(account, "wallet", currency, f"seed wallet {n}") for n, account in enumerate(seeded.wallets)]
    rows += [(account, "vendor", currency, f"seed vendor {n}") for n, account in enumerate(seeded.vendors)]
    async with conn.transaction():
        await store.insert_accounts(conn, rows)
    return seeded


def hot_payment(n: int, hot_share: float) -> bool:
    """Whether payment n of a seed goes to the hot vendor (it is entry 2n + 2 of a fresh journal)."""
    return int((n + 1) * hot_share) > int(n * hot_share)


def _transfers(
    seeded: SeedAccounts, currency: str, hot_share: float, payment_metadata: Callable[[int], dict[str, str]]
) -> Iterator[domain.EntryCommand]:
    """Endless pairs: fund a wallet, then spend exactly that on a vendor. Amounts vary
    deterministically, so two seeds of the same size move the same money."""
    for n in itertools.count():
        wallet = seeded.wallets[n % len(seeded.wallets)]
        vendor = seeded.vendors[0] if hot_payment(n, hot_share) else seeded.vendors[n % len(seeded.vendors)]
        amount = 1 + (n * 7919) % SEED_AMOUNT_MAX
        yield _command(f"seed {n} fund", seeded.system, wallet, amount, currency)
        yield _command(f"seed {n} pay", wallet, vendor, amount, currency, payment_metadata(n))


def _command(
    key: str, source: uuid.UUID, target: uuid.UUID, amount: int, currency: str, metadata: dict[str, str] | None = None,
) -> domain.EntryCommand:
    return domain.EntryCommand(
        principal_id=_SEED_PRINCIPAL,
        principal_role="admin",
        idempotency_key=key,
        request_hash=b"",
        from_account_id=source,
        to_account_id=target,
        amount=amount,
        currency=currency,
        reference="seed",
        metadata=metadata or {},
    )


async def _append_batch(conn: psycopg.AsyncConnection, commands: list[domain.EntryCommand]) -> None:
    """Decide the batch on top of the locked head, as the committer does, and COPY it in."""
    state = await store.read_batch_state(
        conn,
        batch_lock=None,
        account_ids=list({c.from_account_id for c in commands} | {c.to_account_id for c in commands}),
        principal_ids=[],
        keys=[],
    )
    committed_at = domain.stamp_after(dt.datetime.now(dt.timezone.utc), state.head_committed_at)
    result = domain.decide_batch(commands, state, committed_at=domain.format_timestamp(committed_at))
    assert len(result.entries) == len(commands), "a seeded transfer was refused: the plan is wrong"
    await store.copy_batch(conn, result, committed_at=committed_at)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledger seed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a login allowed to write the journal directly")
    parser.add_argument("--entries", type=int, required=True)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--currency", default="USD")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--hot-share", type=float, default=0.0, help="share of payments to the first vendor")
    args = parser.parse_args(argv)
    started = time.monotonic()
    asyncio.run(seed_journal(
        args.database_url, entries=args.entries, accounts=args.accounts, currency=args.currency, batch=args.batch,
        hot_share=args.hot_share,
    ))
    seconds = time.monotonic() - started
    print(f"seeded {args.entries} entries in {seconds:.1f} s ({args.entries / seconds:,.0f} entries/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
