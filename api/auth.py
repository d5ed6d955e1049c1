"""Bearer tokens, and the role check every route's declared roles go through.

Tokens are random 256-bit strings shown once; the database keeps only their SHA-256. A lookup
hashes the presented token and compares digests in constant time. Principals never change once
created, so a found principal is cached (bounded); an unknown token is looked up every time, so
a principal created by another process is seen at once.
"""

from __future__ import annotations

import collections
import re

from ledger import store
from ledger.principals import Principal, token_digest
from api.problems import ApiError

TOKEN_CHARS_MAX = 256
CACHE_ENTRIES_MAX = 10_000
# RFC 9110: the scheme name is case-insensitive; the token itself is not.
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_\-\.~+/]+=*)$")

# The roles that read every account, transfer and projection; others read only what they own.
READ_EVERYTHING = frozenset({"admin", "auditor"})


class Authenticator:
    def __init__(self, pool) -> None:
        self._pool = pool
        self._cache: collections.OrderedDict[bytes, Principal] = collections.OrderedDict()

    async def authenticate(self, header: str | None) -> Principal:
        match = _BEARER.match(header or "")
        if match is None or len(match.group(1)) > TOKEN_CHARS_MAX:
            raise ApiError("unauthenticated")
        digest = token_digest(match.group(1))
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
            return cached
        async with self._pool.connection() as conn:
            row = await store.principal_by_token_hash(conn, digest)
        if row is None:
            raise ApiError("unauthenticated")
        principal = Principal(row.id, row.role, row.name)
        self._cache[digest] = principal
        if len(self._cache) > CACHE_ENTRIES_MAX:
            self._cache.popitem(last=False)
        return principal

    def remember(self, token: str, principal: Principal) -> None:
        self._cache[token_digest(token)] = principal


def require_role(principal: Principal, roles: frozenset[str], action: str) -> None:
    """`roles`: those the route declares (`api.framework.Route.roles`); `action` names it."""
    if principal.role not in roles:
        raise ApiError("forbidden", f"role {principal.role} may not call {action}")

