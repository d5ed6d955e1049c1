"""Whose each resource of the API is: the owner lookups that routes declare, one per kind.

Routes declare them as their `Ownership` in `api.routes`. `api.framework.authorize_owner` applies
the one rule to what they find, before the handler runs, and hands the handler the resource.

Each lookup takes the services, the resource's id (or position) and whether the owners are needed
(admin and auditor need none, so their requests make no owner query), and answers None when there
is no such resource.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

import schemas
from api.framework import Owned
from ledger import store


async def known_account(services, account_id: uuid.UUID) -> store.AccountRow | None:
    """The account's row, from the process's cache (accounts never change owner or kind) or read
    and then cached."""
    account = services.accounts.get(account_id)
    if account is None:
        async with services.pool.connection() as conn:
            account = await store.account_by_id(conn, account_id)
        if account is not None:
            services.remember_account(account)
    return account


async def account(services, account_id: uuid.UUID, *, owners: bool) -> Owned | None:
    row = await known_account(services, account_id)
    return None if row is None else Owned(row, (row.owner_id,))


async def vendor_account(services, account_id: uuid.UUID, *, owners: bool) -> Owned | None:
    """A vendor account; any other account is not one, so no vendor route reaches it."""
    row = await known_account(services, account_id)
    return None if row is None or row.kind != "vendor" else Owned(row, (row.owner_id,))


async def transfer(services, transfer_id: uuid.UUID, *, owners: bool) -> Owned | None:
    """A committed entry, owned by the owners of either party."""
    async with services.pool.connection() as conn:
        entry = await store.entry_by_transfer_id(conn, transfer_id)
        if entry is None:
            return None
        found = await store.account_owners(conn, [entry.from_account_id, entry.to_account_id]) if owners else {}
    return Owned(entry, found.values())


class Payment(NamedTuple):
    entry: schemas.JournalEntry
    receiver: store.AccountRow | None


async def payment(services, transfer_id: uuid.UUID, *, owners: bool) -> Owned | None:
    """An entry and the account it paid, owned by the receiver's owner alone (who may refund it)."""
    async with services.pool.connection() as conn:
        entry = await store.entry_by_transfer_id(conn, transfer_id)
        if entry is None:
            return None
        receiver = await store.account_by_id(conn, entry.to_account_id)
    return Owned(Payment(entry, receiver), (receiver.owner_id,) if receiver is not None else ())


def _hold(*parties: str):
    """A hold, owned by the owners of its `parties` (account fields)."""

    async def lookup(services, hold_id: uuid.UUID, *, owners: bool) -> Owned | None:
        async with services.pool.connection() as conn:
            hold = await store.hold_by_id(conn, hold_id)
            if hold is None:
                return None
            found = await store.account_owners(conn, [getattr(hold, name) for name in parties]) if owners else {}
        return Owned(hold, found.values())

    return lookup


hold_of_payee = _hold("to_account_id")  # captured by whoever owns the account it pays
hold_of_parties = _hold("from_account_id", "to_account_id")


async def entry_at(services, position: int, *, owners: bool) -> Owned | None:
    """The entry at a journal position, owned by the owners of every account it touches."""
    async with services.pool.connection() as conn:
        entries = await store.entries_by_positions(conn, [position])
        if not entries:
            return None
        entry = entries[0]
        touched = {entry.from_account_id, entry.to_account_id} | {p.account_id for p in entry.postings}
        found = await store.account_owners(conn, list(touched)) if owners else {}
    return Owned(entry, found.values())
