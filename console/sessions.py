"""Sessions: the API token kept server-side in memory under a random id, bounded in count and age

The browser holds only the session id (an `HttpOnly` cookie); the token never reaches a page's
scripts or a URL. A session ends when it is signed out, idle too long, too old, evicted as the
least recently used when the store is full, or when the API answers its token with 401 (revoked).
Sessions live in the API process that made them: behind several API processes, the proxy keeps a
browser on one (sticky), or a restart signs everyone out, which costs a paste of the token.
"""

from __future__ import annotations

import collections
import hmac
import secrets
import time
from dataclasses import dataclass, field

SESSIONS_MAX = 10_000  # per API process; past it the least recently used session ends
SESSION_IDLE_S_MAX = 30 * 60  # a session unused this long ends
SESSION_AGE_S_MAX = 12 * 3600  # however busy, a session ends this long after sign-in
SESSION_ID_BYTES = 32  # secrets.token_urlsafe: 43 characters, 256 random bits
CSRF_BYTES = 32


@dataclass(slots=True)
class Session:
    id: str = field(repr=False)
    token: str = field(repr=False)  # never in a log line or a traceback's locals as printed
    principal_id: str
    role: str
    name: str
    created_at: float  # time.monotonic()
    seen_at: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(CSRF_BYTES), repr=False)

    def csrf_matches(self, presented: str | None) -> bool:
        """Constant time, so the token cannot be learned a character at a time."""
        return hmac.compare_digest(self.csrf.encode(), (presented or "").encode())


class SessionStore:
    """Sessions by id, least recently used first; every bound is checked on use, none by a timer."""

    def __init__(self, *, sessions_max: int = SESSIONS_MAX, idle_s_max: float = SESSION_IDLE_S_MAX,
                 age_s_max: float = SESSION_AGE_S_MAX, clock=time.monotonic) -> None:
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._sessions_max = sessions_max
        self._idle_s_max = idle_s_max
        self._age_s_max = age_s_max
        self._clock = clock

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, *, token: str, principal_id: str, role: str, name: str) -> Session:
        now = self._clock()
        self._drop_expired(now)
        while len(self._sessions) >= self._sessions_max:
            self._sessions.popitem(last=False)
        session = Session(secrets.token_urlsafe(SESSION_ID_BYTES), token, principal_id, role, name, now, now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle clock restarted), or None."""
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[session.id]
            return None
        session.seen_at = now
        self._sessions.move_to_end(session.id)
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.seen_at > self._idle_s_max or now - session.created_at > self._age_s_max

    def _drop_expired(self, now: float) -> None:
        """The least recently used come first: stop at the first that is still idle-fresh (an older
        one past its absolute age further on is caught by `get`)."""
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if not self._expired(oldest, now):
                return
            del self._sessions[oldest.id]
