"""The wallet ledger: an append-only double-entry journal with group commit."""
