"""The typed Python client of the ledger's HTTP API. It needs only aiohttp and msgspec (and the
shared `schemas`), so `pip install wallet-ledger` installs it without the server's dependencies."""

from client.aio import LedgerClient, LedgerProblem

__all__ = ["LedgerClient", "LedgerProblem"]
