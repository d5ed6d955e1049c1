"""Bearer tokens, and the role check every route's declared roles go through.

Tokens are random 256-bit strings shown once; the database keeps only their SHA-256. A lookup
hashes the presented token and finds its principal among the tokens not revoked. Every answer,
found or not, is reused for at most `auth_cache_ms` (below one second): so a revoked token is
refused by every API process within a second, and a flood of one unknown token costs one
database lookup per process per period, not one per request. Requests that miss the cache while a
lookup of the same token is in flight wait for that lookup instead of starting their own: at
thousands of requests a second, an expired entry would otherwise send every request of the token
that arrives during the lookup to the database too. Both caches are bounded.

Distinct bogus tokens would each cost a lookup (contract v3 "Settled"): a lookup that finds no
token spends one of `FAILED_LOOKUPS_PER_S_MAX` a second of the client's address, and once they are
spent a request that would need a lookup is 429 `rate_limited` without one. "No such token"
answers are cached apart from the real ones, so bogus tokens only push out each other.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import ipaddress
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass

from ledger import metrics, store
from ledger.principals import Principal, token_digest
from api.problems import ApiError
from api.ratelimit import RateLimiter

log = logging.getLogger("ledger.auth")

TOKEN_CHARS_MAX = 256
CACHE_ENTRIES_MAX = 10_000  # real tokens
UNKNOWN_ENTRIES_MAX = 10_000  # "no such token" answers, kept apart so they never evict real ones
FAILED_LOOKUPS_PER_S_MAX = 100  # per client address (an IPv6 client: its /64), contract v3
IPV6_CLIENT_PREFIX = 64  # one subscriber's network: rotating addresses inside it earns nothing
USED_TOKENS_MAX = 10_000
# RFC 9110: the scheme name is case-insensitive; the token itself is not.
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_\-\.~+/]+=*)$")

# The roles that read every account, transfer and projection; others read only what they own.
READ_EVERYTHING = frozenset({"admin", "auditor"})


@dataclass(frozen=True, slots=True)
class _Cached:
    expires_at: float  # time.monotonic()
    principal: Principal | None  # None: no live token has this digest
    token_id: uuid.UUID | None


class Authenticator:
    def __init__(self, pool, *, cache_ms: int, clock=time.monotonic) -> None:
        self._pool = pool
        self._cache_s = cache_ms / 1000
        self._clock = clock
        self._cache: collections.OrderedDict[bytes, _Cached] = collections.OrderedDict()
        self._unknown: collections.OrderedDict[bytes, _Cached] = collections.OrderedDict()
        self._failures = RateLimiter(rate_per_s=FAILED_LOOKUPS_PER_S_MAX, burst=FAILED_LOOKUPS_PER_S_MAX, clock=clock)
        self._used: set[uuid.UUID] = set()  # tokens used since the last flush (`last_used_at`)
        # digest -> the lookup in flight for it; at most one per token, so bounded by the requests in flight
        self._fetching: dict[bytes, asyncio.Future[_Cached]] = {}
        self._generation = 0  # moved by `forget`: a lookup begun before it caches nothing

    async def authenticate(self, header: str | None, *, client: str | None) -> Principal:
        """The principal of the bearer token in `header`; `client` is the peer's address."""
        match = _BEARER.match(header or "")
        if match is None or len(match.group(1)) > TOKEN_CHARS_MAX:
            raise ApiError("unauthenticated")
        found = await self._lookup(token_digest(match.group(1)), client_key(client))
        if found.principal is None:
            raise ApiError("unauthenticated")
        if len(self._used) < USED_TOKENS_MAX:
            self._used.add(found.token_id)
        return found.principal

    async def _lookup(self, digest: bytes, client: str) -> _Cached:
        cached = self._cache.get(digest) or self._unknown.get(digest)
        if cached is not None and cached.expires_at > self._clock():
            (self._cache if cached.principal else self._unknown).move_to_end(digest)
            return cached
        fetching = self._fetching.get(digest)
        if fetching is None:
            # Spent before the lookup (so concurrent misses cannot overrun it), given back if found.
            wait_s = self._failures.take(client)
            if wait_s > 0:
                raise ApiError("rate_limited", "Too many failed authentications from this address",
                               retry_after_s=max(1, math.ceil(wait_s)))
            fetching = self._fetching[digest] = asyncio.ensure_future(self._fetch(digest, self._clock(), client))
            fetching.add_done_callback(lambda done: self._fetched(digest, done))
        # One waiter's timeout must not cancel the lookup the others wait for.
        return await asyncio.shield(fetching)

    def _fetched(self, digest: bytes, done: asyncio.Future) -> None:
        if self._fetching.get(digest) is done:
            del self._fetching[digest]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone (timed out) before it failed

    async def _fetch(self, digest: bytes, now: float, client: str) -> _Cached:
        generation = self._generation
        async with self._pool.connection() as conn:
            row = await store.principal_by_token_hash(conn, digest)
        metrics.AUTH_LOOKUPS.labels("found" if row else "unknown").inc()
        if row:
            self._failures.give_back(client)
        principal = Principal(row.id, row.role, row.name) if row else None
        fresh = _Cached(now + self._cache_s, principal, row.token_id if row else None)
        if generation != self._generation:
            return fresh  # forgotten meanwhile: answer the requests that waited, cache nothing
        cache, entries_max = (self._cache, CACHE_ENTRIES_MAX) if row else (self._unknown, UNKNOWN_ENTRIES_MAX)
        cache[digest] = fresh
        cache.move_to_end(digest)
        while len(cache) > entries_max:
            cache.popitem(last=False)
        return fresh

    def forget(self) -> None:
        """Drop every cached answer (this process revoked a token: refuse it here at once), and
        let no lookup begun before now answer a request that comes after."""
        self._cache.clear()
        self._unknown.clear()
        self._fetching.clear()
        self._generation += 1

    async def flush_usage(self) -> int:
        """Write `last_used_at` for the tokens used since the last flush; returns how many."""
        used, self._used = list(self._used), set()
        if used:
            async with self._pool.connection() as conn:
                await store.mark_tokens_used(conn, used, at=dt.datetime.now(dt.timezone.utc))
        return len(used)


def client_key(address: str | None) -> str:
    """What the failed-lookup budget is kept per: the IPv4 address, or the /64 of an IPv6 one
    (behind a proxy, the proxy's: it is the peer; no forwarded header is trusted)."""
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return address or ""
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))


def require_role(principal: Principal, roles: frozenset[str], action: str) -> None:
    """`roles`: those the route declares (`api.framework.Route.roles`); `action` names it."""
    if principal.role not in roles:
        raise ApiError("forbidden", f"role {principal.role} may not call {action}")

