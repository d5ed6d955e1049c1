"""A forked history is never signed (issue 24 #3, contract v3 "Entries a verifier can recompute").

Whoever can write the database rewrites an entry, rehashes every later one and runs `ledger
projector rebuild`: the stored tree is then a different tree. The tree follower must not sign it
(RFC 9162: the tree at the last signed size must still have the last signed root), `GET
/v1/journal/checkpoints/latest` keeps answering the last good head, `/readyz` and a metric say so,
and `ledger checkpoint` refuses too. The whole service runs on a database and a NATS of the test's
own, because the tamper must not reach the session's shared database.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import msgspec
import psycopg
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from cli import processes
from ledger import domain, principals, store
from ledger.config import Settings
from ledger.exits import Exit
from proofs import command, fork, signing
from proofs import follower as tree_follower
from proofs import store as tree_store
from tests.conftest import eventually
from tests.plugins.stack import Client, api_at
from tools.embedded import EmbeddedNats, free_port
from tools.seed import seed_journal

SEEDED_ENTRIES = 40
REWRITTEN_POSITION = 10
SIGN_INTERVAL_S = 1  # the follower signs every second in this test
FORKED_GAUGE = "ledger_tree_heads_forked"
JOURNAL_PAGE_LIMIT = 10_000


@pytest_asyncio.fixture
async def own_nats(tmp_path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(data_dir=tmp_path / "nats", port=free_port())
    server.start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def projector_process(settings: Settings) -> AsyncIterator[None]:
    """`ledger projector` as the command line composes it: the read models and the tree follower."""
    task = asyncio.create_task(processes.projector(settings), name="fork-projector")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def rewrite_history(url: str, position: int, **changes) -> None:
    """As the superuser: edit the entry at `position` and rehash every entry from it on, head
    included, so that the chain itself stays consistent (only a signed head can tell)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        entries = await store.entries_after(conn, 0, JOURNAL_PAGE_LIMIT)
        prev_hash = entries[position - 2].hash if position > 1 else domain.ZERO_HASH
        for entry in entries[position - 1:]:
            edited = msgspec.structs.replace(entry, prev_hash=prev_hash, **(changes if entry.position == position else {}))
            digest = domain.recompute_hash(edited)
            await conn.execute("UPDATE journal SET reference = %s, prev_hash = %s, hash = %s WHERE position = %s",
                               (edited.reference, prev_hash, digest, entry.position))
            prev_hash = digest
        await conn.execute("UPDATE journal_head SET hash = %s WHERE id = 1", (prev_hash,))


async def latest_head(client: Client, token: str) -> dict | None:
    reply = await client.get("/v1/journal/checkpoints/latest", token=token)
    assert reply.status in (200, 404), reply.text
    return reply.body if reply.status == 200 else None


async def tree_size(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await tree_store.tree_size(conn)


@pytest.mark.slow  # a child process: a NATS server of its own
async def test_the_tree_follower_never_signs_a_rewritten_and_rebuilt_journal(own_database, own_nats, tmp_path):
    url = own_database
    settings = Settings().replace(database={"url": url}, nats={"url": own_nats.url}, http={"port": free_port()},
                                  proofs={"sign_interval_s": SIGN_INTERVAL_S, "signing_key": str(tmp_path / "signing-key.pem")})
    await seed_journal(url, entries=SEEDED_ENTRIES, accounts=10)
    _, admin = await principals.create_at(url, role="admin", name="fork test admin")
    async with api_at(settings) as client:
        async with projector_process(settings):
            async def signed_all() -> dict | None:
                head = await latest_head(client, admin)
                return head if head and head["tree_size"] == SEEDED_ENTRIES else None

            good = await eventually(signed_all, timeout_s=20, what="the seeded journal's head signed")
            assert REGISTRY.get_sample_value(FORKED_GAUGE) == 0  # set by the round that signed it
        # The tamper: stop the projector, rewrite an entry and everything after it, rebuild.
        await rewrite_history(url, REWRITTEN_POSITION, reference="rewritten")
        await processes.projector_rebuild(settings)
        # A new entry on top of the forked history, through the API.
        system = await client.post("/v1/accounts", token=admin, json={"kind": "system", "currency": "USD"})
        wallet = await client.post("/v1/accounts", token=admin, json={"kind": "wallet", "currency": "USD"})
        paid = await client.post("/v1/transfers", token=admin, key=str(uuid.uuid4()), json={
            "from_account_id": system.body["id"], "to_account_id": wallet.body["id"], "amount": 5, "currency": "USD"})
        assert paid.status == 201, paid.text
        async with projector_process(settings):
            async def tree_grown_and_a_verdict() -> bool:
                head = await latest_head(client, admin)
                moved = head is not None and head["tree_size"] > SEEDED_ENTRIES  # today's bug: the fork signed
                forked = REGISTRY.get_sample_value(FORKED_GAUGE) == 1
                return await tree_size(url) == paid.body["position"] and (moved or forked)

            await eventually(tree_grown_and_a_verdict, timeout_s=20, what="the follower's verdict on the forked tree")
            assert await latest_head(client, admin) == good, "a head was signed over the forked history"

            async def readiness_says_so() -> dict:
                reply = await client.get("/readyz")
                return reply.body if reply.body["checks"].get("tree_heads") == "forked" else None

            ready = await eventually(readiness_says_so, timeout_s=20, what="/readyz reporting the fork")
            assert ready["checks"]["database"] == "ok"
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                signed_sizes = [head.tree_size for head in await tree_store.tree_heads(conn)]
            assert signed_sizes == [SEEDED_ENTRIES], signed_sizes
            assert await latest_head(client, admin) == good
            # The tree follower's gauge (the projector process serves it on its /metrics; here every
            # server shares the test's registry).
            assert REGISTRY.get_sample_value(FORKED_GAUGE) == 1

    # `ledger checkpoint` refuses the same way: exit 2, nothing signed.
    code = await asyncio.to_thread(command.main, settings, key_path=settings.proofs.signing_key, out=None,
                                   export_public_key=False)
    assert code == command.Exit.USAGE
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        assert [head.tree_size for head in await tree_store.tree_heads(conn)] == [SEEDED_ENTRIES]
        signed_checkpoints = await (await conn.execute("SELECT count(*) FROM signed_checkpoints")).fetchone()
        assert signed_checkpoints == (0,)


async def test_only_extensions_of_the_last_signed_head_pass_and_a_restored_journal_signs_again(own_database, tmp_path):
    """The check itself (`proofs.fork`), on the tree as `projector rebuild` leaves it: a grown
    journal passes, a rewritten or truncated one does not, and the original rows put back pass."""
    url = own_database
    key = signing.load_or_create_key(tmp_path / "key.pem")
    await seed_journal(url, entries=SEEDED_ENTRIES, accounts=10)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await tree_follower.rebuild(conn)
        first = await fork.sign_extension(conn, key, tree_size=SEEDED_ENTRIES)
        original = await store.entries_after(conn, 0, JOURNAL_PAGE_LIMIT)
    await seed_journal(url, entries=6, accounts=3)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        grown = await tree_follower.catch_up(conn)
        assert (await fork.sign_extension(conn, key, tree_size=grown)).tree_size == SEEDED_ENTRIES + 6
    await rewrite_history(url, REWRITTEN_POSITION, reference="rewritten")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await tree_follower.rebuild(conn)
        with pytest.raises(fork.ForkedHistory, match="not an extension"):
            await fork.sign_extension(conn, key, tree_size=grown)
        with pytest.raises(fork.ForkedHistory):
            await fork.check_extension(conn, 0)  # the tree at the signed size itself
    assert REGISTRY.get_sample_value(FORKED_GAUGE) == 1
    async with await psycopg.AsyncConnection.connect(url) as conn:  # the journal restored, as a backup would
        for entry in original[REWRITTEN_POSITION - 1:]:
            await conn.execute("UPDATE journal SET reference = %s, prev_hash = %s, hash = %s WHERE position = %s",
                               (entry.reference, entry.prev_hash, entry.hash, entry.position))
    await rewrite_history(url, SEEDED_ENTRIES + 1)  # rehash the grown entries on top of the restored ones
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await tree_follower.rebuild(conn)
        assert await fork.check_extension(conn, grown) is not None
        assert REGISTRY.get_sample_value(FORKED_GAUGE) == 1  # only a signing round or a probe resets it
        assert await fork.sign_extension(conn, key, tree_size=grown, newer_only=True) is None
        assert REGISTRY.get_sample_value(FORKED_GAUGE) == 0
    async with await psycopg.AsyncConnection.connect(url) as conn:  # a journal cut below the signed head
        await conn.execute("DELETE FROM postings WHERE position > 45")
        await conn.execute("DELETE FROM journal WHERE position > 45")
        await conn.execute("UPDATE journal_head SET position = 45, hash = (SELECT hash FROM journal WHERE position = 45)")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        with pytest.raises(fork.ForkedHistory, match="fewer than"):
            await fork.check_extension(conn, 45)
    assert first is not None and first.tree_size == SEEDED_ENTRIES
