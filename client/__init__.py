"""The typed Python client of the ledger's HTTP API: aiohttp, msgspec and the schemas, no more.

So `pip install wallet-ledger` installs it without the server's dependencies.
`SyncLedgerClient` is the same client for code without asyncio.
"""

from client.aio import LedgerClient, LedgerProblem
from client.proof import NotSignedYet, ProofError
from client.sync import SyncLedgerClient

__all__ = ["LedgerClient", "LedgerProblem", "NotSignedYet", "ProofError", "SyncLedgerClient"]
