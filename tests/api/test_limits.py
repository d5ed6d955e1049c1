"""The named limits, each shown at its edge: the per-principal rate limit (429 `rate_limited`),
the bounded commit queue (503 `queue_full`) and the request timeout (503 `timeout`), every one
with Retry-After. Each runs a second API process in the test's event loop with a small limit,
sharing the session's PostgreSQL and NATS; the token bucket is also tested alone with a fake clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from api.ratelimit import RateLimiter
from tests.conftest import eventually
from tests.plugins.stack import api_with


def assert_retry_later(reply, status: int, code: str) -> None:
    assert (reply.status, reply.code) == (status, code), reply.text
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert int(reply.headers["Retry-After"]) >= 1


# ---- rate limit -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_bucket_allows_the_burst_then_refuses_with_the_wait_until_the_next_token():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=5, burst=3, clock=clock)
    who = uuid.uuid4()
    assert [limiter.take(who) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert abs(limiter.take(who) - 0.2) < 1e-9
    clock.now_s += 0.1
    assert abs(limiter.take(who) - 0.1) < 1e-9  # a refused take does not spend what accrued
    clock.now_s += 0.1
    assert limiter.take(who) == 0.0
    assert limiter.take(who) > 0


def test_bucket_refills_at_the_rate_and_saves_up_at_most_the_burst():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=5, burst=3, clock=clock)
    who = uuid.uuid4()
    for _ in range(3):
        limiter.take(who)
    clock.now_s += 3600
    assert [limiter.take(who) == 0.0 for _ in range(4)] == [True, True, True, False]


def test_buckets_are_per_principal():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=clock)
    first, second = uuid.uuid4(), uuid.uuid4()
    assert limiter.take(first) == 0.0
    assert limiter.take(first) > 0
    assert limiter.take(second) == 0.0


def test_rate_zero_means_no_limit():
    limiter = RateLimiter(rate_per_s=0, burst=1, clock=FakeClock())
    who = uuid.uuid4()
    assert all(limiter.take(who) == 0.0 for _ in range(1000))


async def test_fourth_rapid_request_is_429_and_another_principal_is_unaffected(stack):
    wallet = await stack.funded_wallet(0)
    other = await stack.funded_wallet(0)
    async with api_with(stack, api={"rate_per_s": 5, "rate_burst": 3}) as client:
        path = f"/v1/accounts/{wallet.account_id}"
        # Sent together, so the 200 ms a token takes to accrue cannot pass between them. The bucket
        # is emptied after `started`, so a token cannot accrue before started + 200 ms, however long
        # a loaded machine takes to serve the four.
        started = asyncio.get_running_loop().time()
        replies = await asyncio.gather(*[client.get(path, token=wallet.token) for _ in range(4)])
        replies.sort(key=lambda reply: reply.status)
        assert [r.status for r in replies] == [200, 200, 200, 429]
        assert_retry_later(replies[3], 429, "rate_limited")
        assert (await client.get(f"/v1/accounts/{other.account_id}", token=other.token)).status == 200

        async def token_accrued() -> bool:  # a refused request spends nothing, so polling is fair
            return (await client.get(path, token=wallet.token)).status == 200

        await eventually(token_accrued, timeout_s=2, interval_s=0.02)
        # One token at 5/s takes about 200 ms to accrue; not before.
        assert asyncio.get_running_loop().time() - started >= 0.1


# ---- bounded commit queue -------------------------------------------------------------------

FLOOD = 40


async def test_a_full_commit_queue_answers_503_queue_full_and_every_201_is_committed(stack):
    wallet = await stack.funded_wallet(FLOOD * 10)
    vendor = await stack.vendor()
    async with api_with(stack, committer={"queue_max": 1, "batch_linger_ms": 200}) as client:
        body = {"from_account_id": wallet.account_id, "to_account_id": vendor.account_id, "amount": 10,
                "currency": "USD"}
        replies = await asyncio.gather(*[
            client.post("/v1/transfers", token=wallet.token, json=body, key=str(uuid.uuid4())) for _ in range(FLOOD)
        ])
    committed = [r for r in replies if r.status == 201]
    refused = [r for r in replies if r.status != 201]
    assert committed and refused
    print(f"\nqueue_max=1 under {FLOOD} concurrent transfers: {len(committed)} committed, {len(refused)} refused")
    for reply in refused:
        assert_retry_later(reply, 503, "queue_full")
    for reply in committed:
        read = await stack.client.get(f"/v1/transfers/{reply.body['id']}", token=stack.admin)
        assert read.status == 200 and read.body == reply.body
    assert await stack.balance(wallet.account_id) == (FLOOD - len(committed)) * 10
    assert await stack.balance(vendor.account_id) == len(committed) * 10


# ---- request timeout ------------------------------------------------------------------------

TIMEOUT_MS = 300


async def test_a_wait_longer_than_the_request_timeout_answers_503_timeout(stack):
    vendor = await stack.vendor()
    path = f"/v1/vendors/{vendor.account_id}/transfers/{uuid.uuid4()}/verification"
    async with api_with(stack, api={"request_timeout_ms": TIMEOUT_MS}) as client:
        started = time.monotonic()
        reply = await client.get(path, token=vendor.token, params={"min_position": 10**12, "wait_ms": 5000})
        elapsed_s = time.monotonic() - started
        assert_retry_later(reply, 503, "timeout")
        assert TIMEOUT_MS / 1000 <= elapsed_s < 2
        assert (await client.get("/healthz")).status == 200  # the process goes on serving
