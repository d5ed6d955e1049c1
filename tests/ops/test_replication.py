"""The database side of a failover, against real PostgreSQL nodes (`tools/replication.py`): the
pools follow a promoted standby through the multi-host URL with no restart, and a COMMIT that the
synchronous standby never confirmed is reported as unknown, never as done.

The whole bank test on this topology is `tests/ops/test_bank_ha.py`.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from ledger import db, store
from tests.conftest import eventually
from tools.embedded import EmbeddedPostgres, free_port
from tools.replication import PostgresPair

pytestmark = pytest.mark.slow  # replication: PostgreSQL primaries and standbys of its own

FOLLOW_S_MAX = 30.0


async def test_a_commit_whose_wait_for_the_synchronous_standby_was_cancelled_is_unavailable_not_done(tmp_path):
    # A standby that never connects: a COMMIT waits for it (no statement timeout covers that
    # wait), and once the wait is cancelled PostgreSQL reports the COMMIT as done, with a warning.
    postgres = EmbeddedPostgres(data_dir=tmp_path / "pg", port=free_port(), settings={"fsync": "off"})
    await asyncio.to_thread(postgres.start)
    pool = db.make_pool(postgres.url, role=None, size_max=1)
    try:
        async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as admin:
            await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
            await admin.execute("SELECT pg_reload_conf()")
            await pool.open(wait=True)

            async def write() -> None:
                async with pool.connection() as conn:
                    await conn.execute("CREATE TABLE written_on_one_node (x INT8)")

            writing = asyncio.create_task(write())
            async def cancelled_a_wait() -> bool:
                return (await (await admin.execute(
                    "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                )).fetchone())[0] > 0

            await eventually(cancelled_a_wait, timeout_s=FOLLOW_S_MAX, what="a COMMIT waiting for the standby")
            with pytest.raises(store.StoreUnavailable, match="synchronous standby"):
                await asyncio.wait_for(writing, FOLLOW_S_MAX)
            # Committed on this one node all the same, which is why "done" would have been a lie.
            assert (await (await admin.execute("SELECT to_regclass('written_on_one_node')")).fetchone())[0]
    finally:
        await pool.close()
        await asyncio.to_thread(postgres.kill)  # a clean stop would wait for the standby too


async def test_the_pool_follows_a_failover_to_the_promoted_standby_without_a_restart(tmp_path):
    pair = PostgresPair(tmp_path / "pair", settings={"fsync": "off"})
    await asyncio.to_thread(pair.start)
    pool = db.make_pool(pair.url, role=None, size_max=2)
    try:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE kept (x INT8)")
            await conn.execute("INSERT INTO kept VALUES (1)")
            first_port = (await (await conn.execute("SELECT inet_server_port()")).fetchone())[0]
        await asyncio.to_thread(pair.failover)
        failures = 0

        async def written_on_the_promoted_standby():
            nonlocal failures
            try:
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO kept VALUES (2)")
                    return await (await conn.execute("SELECT inet_server_port(), count(*) FROM kept")).fetchone()
            except store.StoreUnavailable:
                failures += 1  # the pooled connection to the dead primary, discarded on failure
                return None

        port, rows = await eventually(written_on_the_promoted_standby, timeout_s=FOLLOW_S_MAX,
                                      what="the pool reaching the promoted standby")
        assert port != first_port and port == pair.primary.port
        assert rows == 2
        assert failures <= 2
    finally:
        await pool.close()
        await asyncio.to_thread(pair.kill)
