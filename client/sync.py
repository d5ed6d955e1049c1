"""The blocking face of the client, for plain scripts: the same methods, without asyncio in sight.

The same methods as `client.LedgerClient`, with the same arguments, answers, errors and retries.

    with SyncLedgerClient("http://127.0.0.1:8080", token=admin_token) as ledger:
        transfer = ledger.transfer(from_account_id=a, to_account_id=b, amount=450,
                                   currency="USD", idempotency_key="order-17")

It is not a second client. Each instance owns a private event loop on a background thread, where
the async `LedgerClient` lives; every public coroutine method of that class becomes a blocking
method here (and every async iterator a plain iterator) when this module is imported, so each
method has exactly one definition. Calls from several threads are safe: they all run on the one
private loop. Do not call it from the event loop of a server it talks to: that loop would be
blocked while waiting for itself.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from client.aio import LedgerClient

T = TypeVar("T")

# How long closing waits for the private loop's thread to finish once the session is closed.
LOOP_STOP_S_MAX = 5.0
# The async methods that are not part of the blocking face: closing is `close` / `with` here.
_NOT_FORWARDED = frozenset({"close"})


class SyncLedgerClient:
    """One principal's blocking view of the API. Keyword options are those of `LedgerClient`
    (`token`, `timeout_s`, `retry_total_s`, `retry_attempts_max`), except `session`, which belongs
    to an event loop. `as_principal` shares the loop and the connections; only the client that
    created them closes them."""

    def __init__(self, base_url: str, **options: Any) -> None:
        if "session" in options:
            raise TypeError("a session belongs to an event loop; SyncLedgerClient makes its own")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ledger-client-loop", daemon=True)
        self._thread.start()
        self._owner = True
        try:
            self._client = self._run(_make_client(base_url, options))
        except BaseException:
            self._stop_loop()
            raise

    @classmethod
    def _sharing(cls, owner: SyncLedgerClient, client: LedgerClient) -> SyncLedgerClient:
        view = cls.__new__(cls)
        view._loop, view._thread, view._owner, view._client = owner._loop, owner._thread, False, client
        return view

    @property
    def base_url(self) -> str:
        return self._client.base_url

    def as_principal(self, token: str) -> SyncLedgerClient:
        return SyncLedgerClient._sharing(self, self._client.as_principal(token))

    def close(self) -> None:
        """Close the connections and stop the private loop; a second call does nothing."""
        if not self._owner or self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncLedgerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(LOOP_STOP_S_MAX)
        if not self._thread.is_alive():
            self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this SyncLedgerClient is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C while waiting: cancel the request on the loop instead of leaving it running.
            future.cancel()
            raise

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(_next(iterator))
                except StopAsyncIteration:
                    return
        finally:
            if not self._loop.is_closed():
                self._run(iterator.aclose())  # type: ignore[attr-defined]


async def _make_client(base_url: str, options: dict[str, Any]) -> LedgerClient:
    # aiohttp binds a session to the running loop, so the client is made on the private one.
    return LedgerClient(base_url, **options)


async def _next(iterator: AsyncIterator[T]) -> T:
    return await iterator.__anext__()


def _blocking(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        def iterate(self: SyncLedgerClient, *args: Any, **kwargs: Any) -> Iterator[Any]:
            return self._iterate(getattr(self._client, name)(*args, **kwargs))

        return iterate

    @functools.wraps(method)
    def call(self: SyncLedgerClient, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self._client, name)(*args, **kwargs))

    return call


def _reading(name: str) -> property:
    return property(lambda self: getattr(self._client, name), doc=getattr(LedgerClient, name).__doc__)


def _forward_public_methods() -> None:
    # LedgerClient's own and inherited members (transport, proof routes), as its MRO resolves them.
    own = set(vars(SyncLedgerClient))
    for name in dir(LedgerClient):
        method = inspect.getattr_static(LedgerClient, name)
        if name.startswith("_") or name in _NOT_FORWARDED or name in own:
            continue
        if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method):
            setattr(SyncLedgerClient, name, _blocking(name, method))
        elif isinstance(method, staticmethod):  # pure helpers (verify_inclusion): the same function
            setattr(SyncLedgerClient, name, method)
        elif isinstance(method, property):  # state read on the loop's client (trusted_head)
            setattr(SyncLedgerClient, name, _reading(name))


_forward_public_methods()
