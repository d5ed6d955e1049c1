"""Versioned migrations and the service roles' grants, in the subset both databases accept."""

from __future__ import annotations

import importlib.resources

import psycopg
from psycopg import sql

from ledger.store.base import GRANTS
from ledger.store.journal import server_version


# ---- migrations -----------------------------------------------------------------------------


def migration_files() -> list[tuple[int, str, str]]:
    folder = importlib.resources.files("ledger") / "migrations"
    found = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            version = int(item.name.split("_", 1)[0])
            found.append((version, item.name, item.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(conn: psycopg.AsyncConnection) -> list[str]:
    """Apply the versioned files not yet recorded, each in its own transaction; safe to rerun."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INT8 PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    await conn.commit()
    applied = {row[0] for row in await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()}
    done = []
    for version, name, text in migration_files():
        if version in applied:
            continue
        async with conn.transaction():
            for statement in split_statements(text):
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
        done.append(name)
    await _dialect_ddl(conn)
    await grant_roles(conn)
    return done


async def _dialect_ddl(conn: psycopg.AsyncConnection) -> None:
    """What only one database has (the hash-sharded journal index on CockroachDB), or has in a
    form of its own (the metadata's inverted index)."""
    from ledger.dialect import from_version

    sql_dialect = from_version(await server_version(conn))
    for ddl in (sql_dialect.journal_index_ddl(), sql_dialect.metadata_index_ddl()):
        if ddl:
            await conn.execute(ddl)


def split_statements(text: str) -> list[str]:
    """Migration files hold plain statements separated by `;` at line ends (no bodies, no quotes
    containing `;`), which keeps them portable and lets CockroachDB run them one by one."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


async def grant_roles(conn: psycopg.AsyncConnection) -> None:
    """Create the service roles if missing and give each exactly its privileges."""
    async with conn.transaction():
        for role, tables in GRANTS.items():
            exists = await (await conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,))).fetchone()
            if not exists:
                await conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
            for table, privileges in tables.items():
                target = sql.Identifier(table)
                await conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(target, sql.Identifier(role)))
                await conn.execute(
                    sql.SQL("GRANT " + privileges + " ON {} TO {}").format(target, sql.Identifier(role))
                )


