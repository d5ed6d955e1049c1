"""The typed Python client of the ledger's HTTP API. It needs only aiohttp and msgspec (and the
shared `schemas`), so `pip install wallet-ledger` installs it without the server's dependencies.
`SyncLedgerClient` is the same client for code without asyncio."""

from client.aio import LedgerClient, LedgerProblem
from client.proof import NotSignedYet, ProofError
from client.sync import SyncLedgerClient

__all__ = ["LedgerClient", "LedgerProblem", "NotSignedYet", "ProofError", "SyncLedgerClient"]
