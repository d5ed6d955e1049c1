"""Journals to tamper with: a seeded journal in a database of the test's own (`own_database`), and
the tamperer's tools, for the audit's and the proofs' tests."""

from __future__ import annotations

import pytest_asyncio
import psycopg

import audit
from tools.seed import seed_journal

SEEDED_ENTRIES = 50
SEEDED_ACCOUNTS = 12


@pytest_asyncio.fixture
async def seeded(own_database) -> str:
    await seed_journal(own_database, entries=SEEDED_ENTRIES, accounts=SEEDED_ACCOUNTS)
    return own_database


async def execute(url: str, *statements: tuple[str, tuple]) -> None:
    """Run statements as the superuser in one transaction: the tamperer's privileges."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for statement, params in statements:
            await conn.execute(statement, params)


def first_failure(report: audit.AuditReport) -> tuple[int, str]:
    assert not report.ok and report.first_failure is not None, report
    return report.first_failure.position, report.first_failure.check
