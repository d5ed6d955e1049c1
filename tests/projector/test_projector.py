"""Events, the projector and vendor verification, against real NATS JetStream and PostgreSQL."""

from __future__ import annotations

import json
import uuid

import msgspec
import nats
import pytest


from ledger import bus, db, domain, metrics, store
from ledger.committer import Committer
from projector import store as projections
from projector.consumer import Projector
from tests.conftest import eventually
from tests.plugins.helpers import verification_path


async def test_vendor_verifies_a_payment_in_one_call_with_min_position(stack):
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 300, reference="inv-1")
    assert paid.status == 201
    reply = await stack.client.get(
        verification_path(vendor.account_id, paid.body["id"]), token=vendor.token,
        params={"min_position": paid.body["position"], "wait_ms": 5000},
    )
    assert reply.status == 200, reply.text
    assert int(reply.headers["Ledger-Projection-Position"]) >= paid.body["position"]
    assert reply.body["status"] == "verified"
    assert reply.body["transfer_id"] == paid.body["id"] and reply.body["amount"] == 300
    assert reply.body["payer_account_id"] == wallet.account_id and reply.body["hash"] == paid.body["hash"]
    assert reply.body["reference"] == "inv-1" and reply.body["position"] == paid.body["position"]


async def test_another_vendor_is_forbidden_and_a_transfer_to_someone_else_is_not_found(stack):
    wallet = await stack.funded_wallet(1000)
    mine, other = await stack.vendor(), await stack.vendor()
    to_other = await stack.transfer(wallet.token, wallet.account_id, other.account_id, 10)
    params = {"min_position": to_other.body["position"], "wait_ms": 5000}
    forbidden = await stack.client.get(verification_path(other.account_id, to_other.body["id"]), token=mine.token,
                                       params=params)
    assert forbidden.status == 403 and forbidden.code == "forbidden"
    missing = await stack.client.get(verification_path(mine.account_id, to_other.body["id"]), token=mine.token,
                                     params=params)
    assert missing.status == 404 and missing.code == "not_found"
    assert int(missing.headers["Ledger-Projection-Position"]) >= to_other.body["position"]


async def test_a_client_cannot_read_vendor_projections(stack):
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10)
    reply = await stack.client.get(verification_path(vendor.account_id, paid.body["id"]), token=wallet.token)
    assert reply.status == 403


async def test_projection_behind_is_503_with_retry_after(stack):
    vendor = await stack.vendor()
    reply = await stack.client.get(
        verification_path(vendor.account_id, str(uuid.uuid4())), token=vendor.token,
        params={"min_position": 10**12, "wait_ms": 50},
    )
    assert reply.status == 503 and reply.code == "projection_behind"
    assert int(reply.headers["Retry-After"]) >= 1


async def test_vendor_lists_its_transfers_page_by_page(stack):
    vendor = await stack.vendor()
    wallet = await stack.funded_wallet(1000)
    ids = []
    for amount in (1, 2, 3, 4, 5):
        ids.append((await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, amount)).body["id"])
    last = (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 6)).body
    ids.append(last["id"])
    await stack.client.get(verification_path(vendor.account_id, last["id"]), token=vendor.token,
                           params={"min_position": last["position"], "wait_ms": 5000})
    seen, cursor = [], None
    while True:
        params = {"limit": 4} | ({"after": cursor} if cursor else {})
        page = await stack.client.get(f"/v1/vendors/{vendor.account_id}/transfers", token=vendor.token, params=params)
        assert page.status == 200 and "Ledger-Projection-Position" in page.headers
        seen += [item["transfer_id"] for item in page.body["items"]]
        cursor = page.body["next"]
        if cursor is None:
            break
    assert seen == ids
    assert await _pages(stack, vendor, order="desc") == ids[::-1]


async def test_newest_first_pages_back_through_a_metadata_search_too(stack):
    vendor, wallet = await stack.vendor(), await stack.funded_wallet(1000)
    web = []
    for n in range(6):
        channel = "web" if n % 2 == 0 else "app"
        paid = (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1 + n,
                                     metadata={"channel": channel})).body
        web += [paid["id"]] if channel == "web" else []
    await stack.client.get(verification_path(vendor.account_id, paid["id"]), token=vendor.token,
                           params={"min_position": paid["position"], "wait_ms": 5000})
    assert await _pages(stack, vendor, order="desc", **{"metadata.channel": "web", "limit": 2}) == web[::-1]


async def _pages(stack, vendor, **params) -> list[str]:
    """Every transfer id of the vendor's list, read 4 a page with `params`."""
    seen, cursor = [], ""
    while cursor is not None:
        page = await stack.client.get(f"/v1/vendors/{vendor.account_id}/transfers", token=vendor.token,
                                      params={"limit": 4, **params} | ({"after": cursor} if cursor else {}))
        assert page.status == 200, page.text
        seen += [item["transfer_id"] for item in page.body["items"]]
        cursor = page.body["next"]
    return seen


async def test_every_committed_entry_is_published_once_with_its_transfer_id(stack):
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    paid = (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 7)).body
    connection = await nats.connect(stack.nats.url)
    try:
        js = connection.jetstream()
        message = await eventually(lambda: _find_event(js, paid["id"]))
        assert message.headers[bus.MSG_ID] == paid["id"]
        event = json.loads(message.data)
        assert event["position"] == paid["position"] and event["hash"] == paid["hash"]
        assert sum(p["amount"] for p in event["postings"]) == 0
    finally:
        await connection.close()


async def _find_event(js, transfer_id: str):
    """Scan the stream from the end for the event of this transfer (tests are small)."""
    info = await js.stream_info(bus.STREAM)
    for seq in range(info.state.last_seq, max(0, info.state.last_seq - 200), -1):
        try:
            message = await js.get_msg(bus.STREAM, seq)
        except Exception:
            continue
        if message.headers and message.headers.get(bus.MSG_ID) == transfer_id:
            return message
    return None


async def _projected_balance(stack, account_id: str) -> int | None:
    async with await stack.superuser() as conn:
        balances = await projections.balances(conn)
    return balances.get(uuid.UUID(account_id))


async def _all_published(stack) -> bool:
    """The publisher cursor has reached the journal head: every event is acknowledged."""
    async with await stack.superuser() as conn:
        cursor, head = await store.publish_progress(conn)
    assert cursor <= head, "the cursor never passes the head"
    return cursor == head


@pytest.mark.slow  # waits out a retry, an outage or a timer by design
async def test_with_nats_down_payments_commit_and_every_event_flows_when_it_returns(stack):
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    await eventually(lambda: _all_published(stack))
    stack.nats.stop()
    try:
        replies = [await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10) for _ in range(5)]
        assert [r.status for r in replies] == [201] * 5
        ready = await eventually(lambda: _readyz_says_nats_down(stack))
        assert ready.body["checks"]["database"] == "ok"
        assert not await _all_published(stack)
    finally:
        stack.nats.start()
    await eventually(lambda: _all_published(stack), timeout_s=20)
    assert await eventually(lambda: _is(_projected_balance(stack, vendor.account_id), 50), timeout_s=20)
    for reply in replies:
        verified = await stack.client.get(verification_path(vendor.account_id, reply.body["id"]), token=vendor.token,
                                          params={"min_position": reply.body["position"], "wait_ms": 5000})
        assert verified.status == 200


async def test_an_entry_whose_process_died_before_publishing_is_published_by_the_sweeper(stack):
    """A committer with no publisher stands for an API process killed between its commit and its
    publish: the entry waits behind the publisher cursor, and the running API's sweeper publishes
    it and moves the cursor to the head."""
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    pool = db.make_pool(stack.database_url, role=store.API_ROLE, size_max=1, serializable=True)
    await pool.open(wait=True)
    try:
        silent = Committer(pool=pool, batch_max=8, queue_max=8, batch_linger_ms=0, commit_retries_max=5, publish=None)
        silent.start()
        answer = await silent.submit(domain.EntryCommand(
            uuid.uuid4(), "admin", "died-before-publishing", b"\x01" * 32, uuid.UUID(wallet.account_id),
            uuid.UUID(vendor.account_id), 9, "USD", "", {}))
        await silent.stop()
    finally:
        await pool.close()
    assert answer.entry is not None and answer.rejection is None
    connection = await nats.connect(stack.nats.url)
    try:
        message = await eventually(lambda: _find_event(connection.jetstream(), str(answer.entry.transfer_id)))
    finally:
        await connection.close()
    assert json.loads(message.data)["position"] == answer.entry.position
    await eventually(lambda: _all_published(stack))


async def test_the_publisher_cursor_moves_only_forward_and_only_over_runs_that_join_it(stack):
    """Two publishers may acknowledge overlapping runs, and a run may be acknowledged before an
    earlier one: the cursor never moves back, and never over a position not yet acknowledged."""
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    for amount in range(1, 5):
        assert (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, amount)).status == 201
    async with await stack.superuser() as conn:
        async with conn.transaction(force_rollback=True):
            await conn.execute("UPDATE publish_cursor SET position = position - 4 WHERE id = 1")
            start, head = await store.publish_progress(conn)
            assert start + 4 <= head
            assert await store.advance_publish_cursor(conn, first=start + 3, last=start + 4) == start  # a gap before it
            assert await store.advance_publish_cursor(conn, first=start + 1, last=start + 2) == start + 2
            assert await store.advance_publish_cursor(conn, first=start + 1, last=start + 1) == start + 2  # overlap
            assert await store.advance_publish_cursor(conn, first=start + 2, last=start + 4) == start + 4
            assert await store.publish_progress(conn) == (start + 4, head)


async def _readyz_says_nats_down(stack):
    reply = await stack.client.get("/readyz")
    return reply if reply.status == 503 and reply.body["checks"]["nats"] == "down" else None


async def _is(awaitable, expected):
    return (await awaitable) == expected


@pytest.mark.slow  # waits out a retry, an outage or a timer by design
async def test_an_event_never_published_is_recovered_from_the_journal(stack):
    """An event that is never published (here: the publisher cursor moved past it while NATS was
    down, as if JetStream had lost it) leaves a hole; the projector fills it from the journal."""
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    fills_before = metrics.PROJECTOR_GAP_FILLS._value.get()
    stack.nats.stop()
    try:
        lost = (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 11)).body
        async with await stack.superuser() as conn:
            await conn.execute("UPDATE publish_cursor SET position = %s WHERE id = 1", (lost["position"],))
    finally:
        stack.nats.start()
    later = (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 12)).body
    for paid in (lost, later):
        reply = await stack.client.get(verification_path(vendor.account_id, paid["id"]), token=vendor.token,
                                       params={"min_position": later["position"], "wait_ms": 10000})
        assert reply.status == 200, reply.text
    assert metrics.PROJECTOR_GAP_FILLS._value.get() > fills_before
    assert await _projected_balance(stack, vendor.account_id) == 23


async def test_redelivered_events_are_applied_once(stack):
    """At-least-once delivery: a projector that crashed after its commit but before its ack gets
    the same events again, and a second projector instance may race the first. Neither applies
    anything twice, because the checkpoint row is locked and re-read inside the applying transaction."""
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    paid = (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 40)).body
    await stack.client.get(verification_path(vendor.account_id, paid["id"]), token=vendor.token,
                           params={"min_position": paid["position"], "wait_ms": 5000})
    async with await stack.superuser() as conn:
        entries = await store.entries_by_positions(conn, [paid["position"]])
    from ledger import db

    pool = db.make_pool(stack.database_url, role=store.PROJECTOR_ROLE, size_max=2)
    await pool.open(wait=True)
    try:
        replay = Projector(settings=stack.settings, pool=pool, bus=bus.EventBus(
            stack.nats.url, name="replay", stream_replicas=stack.settings.nats.stream_replicas))
        replay.watermark = paid["position"] - 1  # as if it had crashed before acking
        await replay.apply(entries)
        await replay.apply(entries)
    finally:
        await pool.close()
    assert await _projected_balance(stack, vendor.account_id) == 40
    async with await stack.superuser() as conn:
        rows = await (await conn.execute(
            "SELECT count(*) FROM verifications WHERE transfer_id = %s", (uuid.UUID(paid["id"]),)
        )).fetchone()
    assert rows[0] == 1


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_rebuild_gives_exactly_the_same_read_models(stack):
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    paid = (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 5)).body
    await stack.client.get(verification_path(vendor.account_id, paid["id"]), token=vendor.token,
                           params={"min_position": paid["position"], "wait_ms": 5000})
    before = await _read_models(stack)
    from projector.consumer import rebuild
    from ledger import db

    pool = db.make_pool(stack.database_url, role=store.PROJECTOR_ROLE, size_max=2)
    await pool.open(wait=True)
    try:
        position = await rebuild(stack.settings, pool)
    finally:
        await pool.close()
    assert position == before[0]
    assert await _read_models(stack) == before


async def _read_models(stack):
    async with await stack.superuser() as conn:
        position = await projections.cursor(conn)
        balances = await projections.balances(conn)
        # projected_at differs
        rows = [msgspec.structs.replace(v, projected_at=None) for v in await projections.verifications(conn)]
    return position, balances, rows


@pytest.mark.slow  # child processes: servers of its own
async def test_events_aged_out_of_the_stream_are_caught_up_from_the_journal(tmp_path):
    """The stream is bounded; what ages out before a projector reads it is read from the journal."""
    import asyncio
    import contextlib

    from ledger import db
    from ledger.config import Settings
    from projector.consumer import serve
    from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port
    from tools.seed import seed_journal

    postgres = EmbeddedPostgres(data_dir=tmp_path / "pg", port=free_port(), settings={"fsync": "off"})
    nats_server = EmbeddedNats(data_dir=tmp_path / "nats", port=free_port())
    postgres.start()
    nats_server.start()
    try:
        await db.migrate(postgres.url)
        await seed_journal(postgres.url, entries=40, accounts=10)  # the publisher cursor moves with it: nothing published
        settings = Settings().replace(database={"url": postgres.url},
                                      nats={"url": nats_server.url, "stream_max_age_s": 1})
        publisher = bus.EventBus(nats_server.url, name="aged", stream_replicas=1, stream_max_age_s=1)
        publisher.start()
        assert await publisher.wait_connected(10)
        async with await psycopg_connect(postgres.url) as conn:
            entries = await store.entries_after(conn, 0, 100)
            head = (await store.journal_head(conn)).position
        assert len(entries) == head == 40
        assert await publisher.publish_entries(entries) == [e.position for e in entries]
        info = await publisher.js.stream_info(bus.STREAM)
        assert info.config.max_age == 1

        async def aged_out() -> bool:
            return (await publisher.js.stream_info(bus.STREAM)).state.messages == 0

        await eventually(aged_out, timeout_s=15)
        await publisher.close()
        projector = asyncio.create_task(serve(settings))
        try:
            async def converged() -> bool:
                async with await psycopg_connect(postgres.url) as conn:
                    return (await projections.cursor(conn) == head
                            and await projections.balances(conn) == await store.write_model_balances(conn))

            await eventually(converged, timeout_s=20)
        finally:
            projector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await projector
    finally:
        nats_server.stop()
        postgres.stop()


async def psycopg_connect(url: str):
    import psycopg

    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def test_concurrent_instances_applying_the_same_range_apply_it_once(stack):
    """Several projector instances racing over one range: the checkpoint row lock lets one apply
    it and makes the others see the moved checkpoint, so nothing is counted twice."""
    import asyncio

    from ledger import db

    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    paid = [(await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 3)).body for _ in range(5)]
    last = paid[-1]["position"]
    await stack.client.get(verification_path(vendor.account_id, paid[-1]["id"]), token=vendor.token,
                           params={"min_position": last, "wait_ms": 5000})
    async with await stack.superuser() as conn:
        entries = await store.entries_by_positions(conn, [p["position"] for p in paid])
        await conn.execute("UPDATE projector_checkpoint SET position = %s WHERE name = %s",
                           (last - 1, stack.settings.projector.name))
        await conn.execute("UPDATE projected_balances SET balance = balance - 3 WHERE account_id = %s",
                           (uuid.UUID(vendor.account_id),))
        await conn.execute("UPDATE projected_balances SET balance = balance + 3 WHERE account_id = %s",
                           (uuid.UUID(wallet.account_id),))
        await conn.execute("DELETE FROM verifications WHERE transfer_id = %s", (uuid.UUID(paid[-1]["id"]),))
    # One pool each, opened beforehand, as separate processes would have: they really race.
    pools = [db.make_pool(stack.database_url, role=store.PROJECTOR_ROLE, size_max=1) for _ in range(8)]
    await asyncio.gather(*(pool.open(wait=True) for pool in pools))
    try:
        racers = []
        for n, pool in enumerate(pools):
            racer = Projector(settings=stack.settings, pool=pool, bus=bus.EventBus(
                stack.nats.url, name=f"racer-{n}", stream_replicas=stack.settings.nats.stream_replicas))
            racer.watermark = last - 1
            racers.append(racer)
        await asyncio.gather(*(racer.apply(entries) for racer in racers))
    finally:
        await asyncio.gather(*(pool.close() for pool in pools))
    assert await _projected_balance(stack, vendor.account_id) == 15


@pytest.mark.slow  # a child process: a NATS server of its own
async def test_a_subscription_refused_while_nats_is_up_is_an_error_once_and_counted_every_time(tmp_path, caplog):
    """NATS answers but will not create the consumer (here a user without consumer rights): the
    follower falls back to reading the journal, slower, and the operator hears of it: one ERROR
    for the failing streak, the metric for every failure, the connection still up."""
    import logging

    import pytest

    from tools.embedded import EmbeddedNats, free_port

    server = EmbeddedNats(data_dir=tmp_path / "nats", port=free_port(), auth=True)
    server.start()
    events = bus.EventBus(server.url_for("api"), name="refused", stream_replicas=1)
    try:
        events.start()
        assert await events.wait_connected(10)
        failures = metrics.DOORBELL_SUBSCRIBE_FAILURES.labels("projector-refused")
        before = failures._value.get()
        with caplog.at_level(logging.INFO, logger="ledger.bus"):
            for _ in range(2):
                with pytest.raises(Exception):
                    await events.subscribe_doorbells("projector-refused", from_start=True)
        assert events.connected
        assert failures._value.get() == before + 2
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and "projector-refused" in r.getMessage()]
        assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    finally:
        await events.close()
        server.stop()
