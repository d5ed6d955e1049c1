"""The real servers: one PostgreSQL and one NATS JetStream per session (from their wheels), the
migrated database on them, and servers or databases of a test's own for tests that break them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from ledger import db
from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    root: Path = tmp_path_factory.mktemp("servers")
    postgres = EmbeddedPostgres(data_dir=root / "pg", port=free_port(), settings={"fsync": "off"})
    nats_server = EmbeddedNats(data_dir=root / "nats", port=free_port())
    postgres.start()
    nats_server.start()
    yield postgres, nats_server
    nats_server.stop()
    postgres.stop()


@pytest.fixture(scope="session")
def postgres(servers) -> EmbeddedPostgres:
    return servers[0]


@pytest.fixture(scope="session")
def nats_server(servers) -> EmbeddedNats:
    return servers[1]


@pytest_asyncio.fixture(scope="session")
async def migrated(postgres) -> str:
    await db.migrate(postgres.url)
    return postgres.url


@pytest_asyncio.fixture(scope="session")
async def migrated_template(postgres) -> str:
    """A migrated database made once, that a test's own database copies: CREATE DATABASE from a
    template is a file copy, much cheaper than running every migration again for each test."""
    name = "template_migrated"
    await create_database(postgres.url, name)
    await db.migrate(database_url(postgres, name))
    return name


@pytest_asyncio.fixture
async def own_database(postgres, migrated_template) -> AsyncIterator[str]:
    """A fresh, migrated database on the session's server, dropped after the test: for tests that
    tamper with a journal, which the shared database must never see."""
    async with database_copy(postgres, migrated_template) as url:
        yield url


@contextlib.asynccontextmanager
async def database_copy(postgres: EmbeddedPostgres, template: str) -> AsyncIterator[str]:
    """A database of the test's own, copied from `template`, dropped on the way out."""
    name = f"own_{uuid.uuid4().hex[:12]}"
    await create_database(postgres.url, name, template=template)
    try:
        yield database_url(postgres, name)
    finally:
        async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def database_url(postgres: EmbeddedPostgres, name: str) -> str:
    return postgres.url.rsplit("/", 1)[0] + "/" + name


async def create_database(server_url: str, name: str, *, template: str = "template1") -> None:
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                           sql.Identifier(template)))


@pytest.fixture
def own_servers(tmp_path):
    """A PostgreSQL and a NATS of this test alone: for a test that kills the database, which the
    session's servers (shared by every other test) must never see."""
    postgres = EmbeddedPostgres(data_dir=tmp_path / "pg", port=free_port(), settings={"fsync": "off"})
    nats_server = EmbeddedNats(data_dir=tmp_path / "nats", port=free_port())
    postgres.start()
    nats_server.start()
    try:
        yield postgres, nats_server
    finally:
        nats_server.stop()
        postgres.kill()
