"""Vendor webhooks, a process of its own (`ledger webhooks`): the journal to signed, retried POSTs."""
