"""The standby gate of the journal followers (`ledger.standby`), on a PostgreSQL of its own whose
synchronous standby never connects: a step the standby has not confirmed writes nothing, within
its bound, and a follower with nothing new to read waits for nothing. The whole failover story,
on a real primary and standby, is `tests/ops/test_failover_replay.py`."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from ledger import db, store
from ledger.follower import JournalFollower
from tools.embedded import EmbeddedPostgres, free_port
from tools.seed import seed_journal

ENTRIES = 6
WAIT_S = 0.3  # the gate's bound here: short, the standby never answers


class Recorder(JournalFollower):
    """A follower whose cursor is in memory and whose effect is the list of positions it wrote."""

    page_max = 100

    def __init__(self, pool) -> None:
        super().__init__(name="standby test follower", pool=pool, log=None)
        self.standby.wait_s = WAIT_S
        self.written: list[int] = []

    async def open_cursor(self, conn) -> int:
        return 0

    async def lock_cursor(self, conn) -> int:
        return self.written[-1] if self.written else 0

    async def write(self, conn, run: list) -> None:
        self.written.extend(entry.position for entry in run)


@pytest_asyncio.fixture
async def database(tmp_path):
    postgres = EmbeddedPostgres(data_dir=tmp_path / "pg", port=free_port(), settings={"fsync": "off"})
    await asyncio.to_thread(postgres.start)
    try:
        await db.migrate(postgres.url)
        await seed_journal(postgres.url, entries=ENTRIES, accounts=10)
        yield postgres.url
    finally:
        await asyncio.to_thread(postgres.kill)  # a clean stop would wait for the standby


async def name_standby(url: str, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
        await admin.execute("SELECT pg_reload_conf()")


def held_back() -> float:
    return REGISTRY.get_sample_value("ledger_follower_standby_unconfirmed_total",
                                     {"follower": "standby test follower"}) or 0.0


async def test_a_step_the_standby_has_not_confirmed_writes_nothing_and_an_idle_one_waits_for_nothing(database):
    pool = db.make_pool(database, role=store.PROJECTOR_ROLE, size_max=1)
    await pool.open(wait=True)
    try:
        follower = Recorder(pool)
        await name_standby(database, "nobody")
        before = held_back()
        with pytest.raises(store.StoreUnavailable, match="did not confirm"):
            await asyncio.wait_for(follower.step(), WAIT_S * 20)  # the gate's bound, not this one
        assert follower.written == [] and follower.position == 0
        assert held_back() == before + 1

        await name_standby(database, "")  # no synchronous standby: what is committed is all there is
        assert await follower.follow() == ENTRIES
        assert follower.written == list(range(1, ENTRIES + 1))

        await name_standby(database, "nobody")  # nothing new: the step confirms nothing, so waits for nothing
        run, more = await asyncio.wait_for(follower.step(), WAIT_S * 20)
        assert (run, more) == ([], False) and held_back() == before + 1
    finally:
        await pool.close()


async def test_the_gate_refuses_to_confirm_inside_a_transaction(database):
    follower = Recorder(None)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        async with conn.transaction():
            with pytest.raises(RuntimeError, match="outside a transaction"):
                await follower.standby.confirm(conn)
