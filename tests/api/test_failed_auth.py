"""Failed authentication is bounded per client address (issue 24 #9, contract v3 "Settled"): an
unknown token costs at most 100 database lookups a second per address, past that it is 429
`rate_limited` with `Retry-After` and no lookup; and bogus tokens never push real ones out of the
token cache.

Each test sends from its own loopback address (all of 127.0.0.0/8 is loopback on Linux), so the
session's other tests, which send from 127.0.0.1, neither spend nor see its budget."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
from prometheus_client import REGISTRY

from api import auth
from api.app import SERVICES

LOOKUPS_PER_S_MAX = 100  # the contract's bound
WAVE = 200  # bogus tokens sent at once
WAVES_MAX = 10  # a loaded machine may send fewer than 100 a second in one wave; the next ones catch up


def _lookups(result: str) -> float:
    return REGISTRY.get_sample_value("ledger_auth_lookups_total", {"result": result}) or 0.0


async def _flood(stack, address: str, tokens: list[str]) -> list[tuple[int, dict, str | None]]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=100)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(token: str):
            async with session.get(f"{stack.client.base}/v1/journal/head",
                                   headers={"Authorization": f"Bearer {token}"}) as reply:
                body = await reply.json(content_type=None)
                return reply.status, dict(reply.headers), body.get("code")
        return await asyncio.gather(*(one(token) for token in tokens))


async def _flood_until_limited(stack, address: str) -> list[tuple[int, dict, str | None]]:
    replies: list = []
    for _ in range(WAVES_MAX):
        replies += await _flood(stack, address, [f"lt_bogus-{uuid.uuid4().hex}" for _ in range(WAVE)])
        if any(status == 429 for status, _, _ in replies):
            break
    return replies


async def test_unknown_tokens_cost_at_most_100_lookups_a_second_per_address_then_429(stack):
    before = _lookups("unknown")
    started = time.monotonic()
    replies = await _flood_until_limited(stack, "127.0.0.3")
    elapsed_s = time.monotonic() - started
    lookups = _lookups("unknown") - before
    assert lookups <= LOOKUPS_PER_S_MAX * (1 + elapsed_s) + 1, (lookups, elapsed_s)
    limited = [r for r in replies if r[0] == 429]
    assert limited and {r[2] for r in limited} == {"rate_limited"}
    assert all(int(r[1]["Retry-After"]) >= 1 for r in limited)
    assert {r[0] for r in replies} == {401, 429}
    assert {r[2] for r in replies if r[0] == 401} == {"unauthenticated"}


async def test_a_flooding_address_leaves_another_address_its_own_budget(stack):
    flooded = await _flood_until_limited(stack, "127.0.0.4")
    assert any(status == 429 for status, _, _ in flooded)
    other = await _flood(stack, "127.0.0.5", [f"lt_bogus-{uuid.uuid4().hex}"])
    assert [(status, code) for status, _, code in other] == [(401, "unauthenticated")]


async def test_a_missing_or_malformed_token_is_401_even_from_a_flooding_address(stack):
    """They cost no lookup, so they are not what the budget bounds."""
    await _flood_until_limited(stack, "127.0.0.6")
    replies = await _flood(stack, "127.0.0.6", ["", "not a token!"])
    assert [(status, code) for status, _, code in replies] == [(401, "unauthenticated")] * 2


async def test_bogus_tokens_never_push_a_real_token_out_of_the_cache(stack, monkeypatch):
    monkeypatch.setattr(auth, "CACHE_ENTRIES_MAX", 20)
    authenticator = auth.Authenticator(stack.app[SERVICES].pool, cache_ms=60_000)
    _, token = await stack.principal("client")
    await authenticator.authenticate(f"Bearer {token}", client="192.0.2.1")
    for n in range(100):  # from many addresses, so no per-address budget stops them
        try:
            await authenticator.authenticate(f"Bearer lt_bogus-{n}", client=f"198.51.100.{n}")
        except auth.ApiError as error:
            assert error.code == "unauthenticated"
    found_before = _lookups("found")
    principal = await authenticator.authenticate(f"Bearer {token}", client="192.0.2.1")
    assert principal.role == "client"
    assert _lookups("found") == found_before, "the real token was looked up again: bogus ones evicted it"


def test_the_budget_is_per_ipv4_address_and_per_ipv6_64():
    assert auth.client_key("2001:db8:1:2::1") == auth.client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert auth.client_key("2001:db8:1:3::1") != auth.client_key("2001:db8:1:2::1")
    assert auth.client_key("::ffff:192.0.2.7") == auth.client_key("192.0.2.7") == "192.0.2.7"
