"""Bearer tokens, and the role check every route's declared roles go through.

Tokens are random 256-bit strings shown once; the database keeps only their SHA-256. A lookup
hashes the presented token and finds its principal among the tokens not revoked. Every answer,
found or not, is reused for at most `auth_cache_ms` (below one second): so a revoked token is
refused by every API process within a second, and a flood of one unknown token costs one
database lookup per process per period, not one per request. Requests that miss the cache while a
lookup of the same token is in flight wait for that lookup instead of starting their own: at
thousands of requests a second, an expired entry would otherwise send every request of the token
that arrives during the lookup to the database too. Both caches are bounded.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import re
import time
import uuid
from dataclasses import dataclass

from ledger import metrics, store
from ledger.principals import Principal, token_digest
from api.problems import ApiError

log = logging.getLogger("ledger.auth")

TOKEN_CHARS_MAX = 256
CACHE_ENTRIES_MAX = 10_000
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
        self._used: set[uuid.UUID] = set()  # tokens used since the last flush (`last_used_at`)
        # digest -> the lookup in flight for it; at most one per token, so bounded by the requests in flight
        self._fetching: dict[bytes, asyncio.Future[_Cached]] = {}
        self._generation = 0  # moved by `forget`: a lookup begun before it caches nothing

    async def authenticate(self, header: str | None) -> Principal:
        match = _BEARER.match(header or "")
        if match is None or len(match.group(1)) > TOKEN_CHARS_MAX:
            raise ApiError("unauthenticated")
        found = await self._lookup(token_digest(match.group(1)))
        if found.principal is None:
            raise ApiError("unauthenticated")
        if len(self._used) < USED_TOKENS_MAX:
            self._used.add(found.token_id)
        return found.principal

    async def _lookup(self, digest: bytes) -> _Cached:
        cached = self._cache.get(digest)
        if cached is not None and cached.expires_at > self._clock():
            self._cache.move_to_end(digest)
            return cached
        fetching = self._fetching.get(digest)
        if fetching is None:
            fetching = self._fetching[digest] = asyncio.ensure_future(self._fetch(digest, self._clock()))
            fetching.add_done_callback(lambda done: self._fetched(digest, done))
        # One waiter's timeout must not cancel the lookup the others wait for.
        return await asyncio.shield(fetching)

    def _fetched(self, digest: bytes, done: asyncio.Future) -> None:
        if self._fetching.get(digest) is done:
            del self._fetching[digest]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone (timed out) before it failed

    async def _fetch(self, digest: bytes, now: float) -> _Cached:
        generation = self._generation
        async with self._pool.connection() as conn:
            row = await store.principal_by_token_hash(conn, digest)
        metrics.AUTH_LOOKUPS.labels("found" if row else "unknown").inc()
        principal = Principal(row.id, row.role, row.name) if row else None
        fresh = _Cached(now + self._cache_s, principal, row.token_id if row else None)
        if generation != self._generation:
            return fresh  # forgotten meanwhile: answer the requests that waited, cache nothing
        self._cache[digest] = fresh
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_ENTRIES_MAX:
            self._cache.popitem(last=False)
        return fresh

    def forget(self) -> None:
        """Drop every cached answer (this process revoked a token: refuse it here at once), and
        let no lookup begun before now answer a request that comes after."""
        self._cache.clear()
        self._fetching.clear()
        self._generation += 1

    async def flush_usage(self) -> int:
        """Write `last_used_at` for the tokens used since the last flush; returns how many."""
        used, self._used = list(self._used), set()
        if used:
            async with self._pool.connection() as conn:
                await store.mark_tokens_used(conn, used, at=dt.datetime.now(dt.timezone.utc))
        return len(used)


def require_role(principal: Principal, roles: frozenset[str], action: str) -> None:
    """`roles`: those the route declares (`api.framework.Route.roles`); `action` names it."""
    if principal.role not in roles:
        raise ApiError("forbidden", f"role {principal.role} may not call {action}")

