"""Journals to tamper with: a seeded journal in a database of the test's own (`own_database`), and
the tamperer's tools, for the audit's and the proofs' tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest_asyncio

import audit
from tests.plugins.servers import create_database, database_copy, database_url
from tools.seed import seed_journal

SEEDED_ENTRIES = 50
SEEDED_ACCOUNTS = 12


@pytest_asyncio.fixture(scope="session")
async def seeded_template(postgres, migrated_template) -> str:
    """The seeded journal, made once; each test tampers with a copy of its own (`seeded`)."""
    name = "template_seeded"
    await create_database(postgres.url, name, template=migrated_template)
    await seed_journal(database_url(postgres, name), entries=SEEDED_ENTRIES, accounts=SEEDED_ACCOUNTS)
    return name


@pytest_asyncio.fixture
async def seeded(postgres, seeded_template) -> AsyncIterator[str]:
    """A database of the test's own holding a journal of SEEDED_ENTRIES entries, dropped after."""
    async with database_copy(postgres, seeded_template) as url:
        yield url


async def execute(url: str, *statements: tuple[str, tuple]) -> None:
    """Run statements as the superuser in one transaction: the tamperer's privileges."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for statement, params in statements:
            await conn.execute(statement, params)


def first_failure(report: audit.AuditReport) -> tuple[int, str]:
    assert not report.ok and report.first_failure is not None, report
    return report.first_failure.position, report.first_failure.check
