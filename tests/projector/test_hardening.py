"""The security review's findings (issue 11) that the projector answers, each reproduced against
the real servers: nothing but the journal is believed (a forged event, a forged watermark), two
projector processes never count an entry twice, and waits on the projection are capped.

The other findings sit with their features: tests/audit, tests/api and tests/ledger test_hardening.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid

import nats
import nats.js.errors
import pytest

from api.app import SERVICES
from ledger import bus
from tests.conftest import eventually
from tests.plugins import children
from tests.plugins.helpers import verification_path


async def journal_head(stack) -> dict:
    reply = await stack.client.get("/v1/journal/head", token=stack.admin)
    assert reply.status == 200, reply.text
    return reply.body


async def publish_raw(stack, subject: str, payload: bytes, *, msg_id: str | None = None) -> None:
    """What an attacker on the machine can do: connect to NATS and publish anything. A forged event
    is waited for until the projector has taken and acknowledged it, as an attacker would time it."""
    client = await nats.connect(stack.nats.url, allow_reconnect=False)
    try:
        if subject != bus.SUBJECT:
            await client.publish(subject, payload)
            await client.flush()
            return
        js = client.jetstream()
        ack = await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id or str(uuid.uuid4())})

        async def consumed() -> bool:
            try:
                info = await js.consumer_info(bus.STREAM, f"projector-{stack.settings.projector.name}")
            except nats.js.errors.NotFoundError:  # the projector has not subscribed yet
                return False
            return info.ack_floor.stream_seq >= ack.seq

        await eventually(consumed, timeout_s=10)
    finally:
        await client.close()


def forged_entry(position: int, prev_hash: str, source: str, target: str, amount: int) -> dict:
    transfer_id = str(uuid.uuid4())
    return {
        "position": position, "transfer_id": transfer_id, "from_account_id": source, "to_account_id": target,
        "amount": amount, "currency": "USD", "reference": "forged", "metadata": {},
        "postings": [{"account_id": source, "amount": -amount}, {"account_id": target, "amount": amount}],
        "committed_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "prev_hash": prev_hash, "hash": "ab" * 32,
    }


async def projected_matches_journal(stack, account_ids: list[str]) -> bool:
    async with await stack.superuser() as conn:
        rows = await (await conn.execute(
            "SELECT b.account_id, b.balance, coalesce(p.balance, 0) FROM balances b"
            " LEFT JOIN projected_balances p ON p.account_id = b.account_id WHERE b.account_id = ANY(%s::UUID[])",
            ([uuid.UUID(a) for a in account_ids],),
        )).fetchall()
    return len(rows) == len(account_ids) and all(row[1] == row[2] for row in rows)


# ---- finding 1: the projector believes any NATS message --------------------------------------


async def test_a_forged_event_at_the_next_position_is_never_projected(stack):
    wallet = await stack.funded_wallet(1_000)
    vendor = await stack.vendor()
    head = await journal_head(stack)
    forged = forged_entry(head["position"] + 1, head["hash"], wallet.account_id, vendor.account_id, 5_000_000)
    await publish_raw(stack, bus.SUBJECT, json.dumps(forged).encode(), msg_id=forged["transfer_id"])
    real = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 100)
    assert real.status == 201, real.text
    params = {"min_position": real.body["position"], "wait_ms": 5000}
    verified = await stack.client.get(verification_path(vendor.account_id, real.body["id"]), token=vendor.token,
                                      params=params)
    assert verified.status == 200, verified.text
    assert verified.body["amount"] == 100 and verified.body["hash"] == real.body["hash"]
    fake = await stack.client.get(verification_path(vendor.account_id, forged["transfer_id"]), token=vendor.token,
                                  params=params)
    assert fake.status == 404 and fake.code == "not_found"
    assert await projected_matches_journal(stack, [wallet.account_id, vendor.account_id])


async def test_events_past_the_journal_head_are_ignored_and_projection_goes_on(stack):
    wallet = await stack.funded_wallet(1_000)
    vendor = await stack.vendor()
    head = await journal_head(stack)
    # Far ahead: the projector must neither believe it nor build a list of every position up to it.
    far = forged_entry(head["position"] + 10**12, head["hash"], wallet.account_id, vendor.account_id, 7)
    await publish_raw(stack, bus.SUBJECT, json.dumps(far).encode())
    near = forged_entry(head["position"] + 3, head["hash"], wallet.account_id, vendor.account_id, 7)
    await publish_raw(stack, bus.SUBJECT, json.dumps(near).encode())
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 5)
    reply = await stack.client.get(verification_path(vendor.account_id, paid.body["id"]), token=vendor.token,
                                   params={"min_position": paid.body["position"], "wait_ms": 5000})
    assert reply.status == 200, reply.text
    assert int(reply.headers["Ledger-Projection-Position"]) < head["position"] + 10**6
    assert await projected_matches_journal(stack, [wallet.account_id, vendor.account_id])


# ---- finding 2: two projector instances count entries twice ----------------------------------


@pytest.mark.slow  # child processes: two `ledger projector`s
async def test_two_projector_processes_under_load_apply_each_entry_once(stack, tmp_path):
    env = children.stack_environment(stack, LEDGER_LOG_LEVEL="WARNING")
    with contextlib.ExitStack() as running:
        extra = [running.enter_context(children.running(["projector"], tmp_path / f"projector-{n}.log", env))
                 for n in range(2)]
        wallets = [await stack.funded_wallet(100_000) for _ in range(8)]
        vendors = [await stack.vendor() for _ in range(4)]

        async def pay(n: int):
            wallet, vendor = wallets[n % len(wallets)], vendors[n % len(vendors)]
            return await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1 + n % 7)

        replies = await asyncio.gather(*(pay(n) for n in range(400)))
        assert all(r.status == 201 for r in replies), {r.status for r in replies}
        last = max(r.body["position"] for r in replies)
        accounts = [w.account_id for w in wallets] + [v.account_id for v in vendors]

        async def converged() -> bool:
            async with await stack.superuser() as conn:
                row = await (await conn.execute(
                    "SELECT position FROM projector_checkpoint WHERE name = %s", (stack.settings.projector.name,)
                )).fetchone()
            return row is not None and row[0] >= last and await projected_matches_journal(stack, accounts)

        await eventually(converged, timeout_s=30)
        assert all(p.poll() is None for p in extra), "a projector process died"
    assert await projected_matches_journal(stack, accounts)


# ---- finding 3: a forged watermark turns waits into a busy loop -------------------------------


@pytest.mark.slow  # waits out a retry, an outage or a timer by design
async def test_a_forged_watermark_does_not_turn_a_wait_into_a_busy_loop(stack):
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10)
    watermark = stack.app[SERVICES].watermark

    async def projected() -> bool:  # the projector's own announcement of the transfer has come
        return watermark.position >= paid.body["position"]

    # Forged only after it: a real announcement arriving later would replace the forged one
    # before the poll below saw it (a race the followers' faster fetch made frequent).
    await eventually(projected, timeout_s=10, interval_s=0.01)
    await publish_raw(stack, bus.WATERMARK_SUBJECT, b"999999999")

    async def announced() -> bool:  # the forged announcement has reached the API
        return watermark.position == 999999999

    await eventually(announced, timeout_s=5, interval_s=0.01)
    cpu_before, started = time.process_time(), time.monotonic()
    reply = await stack.client.get(verification_path(vendor.account_id, paid.body["id"]), token=vendor.token,
                                   params={"min_position": paid.body["position"] + 10**9, "wait_ms": 1000})
    cpu_s, wall_s = time.process_time() - cpu_before, time.monotonic() - started
    assert reply.status == 503 and reply.code == "projection_behind"
    assert wall_s >= 0.9
    # Polling the database every 50 ms for a second is about 20 reads: well under a tenth of a core.
    assert cpu_s < 0.25, f"the wait burned {cpu_s:.2f} s of CPU in {wall_s:.2f} s"


@pytest.mark.slow  # waits out a retry, an expiry or a timer by design
async def test_waiters_past_the_cap_get_503_with_retry_after(stack):
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10)
    cap = stack.settings.api.waiters_max
    params = {"min_position": paid.body["position"] + 10**9, "wait_ms": 1500}
    replies = await asyncio.gather(*(
        stack.client.get(verification_path(vendor.account_id, paid.body["id"]), token=vendor.token, params=params)
        for _ in range(cap + 20)
    ))
    codes = [r.code for r in replies]
    assert codes.count("too_many_waiters") >= 20, sorted(set(codes))
    assert all(r.headers.get("Retry-After") for r in replies if r.code == "too_many_waiters")
    assert set(codes) <= {"too_many_waiters", "projection_behind"}
