"""The security review's findings (issue 11) that the write side answers: nothing waits forever
in the database; a paused process holding the journal head's lock is cut off by it."""

from __future__ import annotations

import time

import psycopg

from ledger import db, store


# ---- finding 4: nothing times out in the database --------------------------------------------


async def test_a_paused_process_holding_the_head_lock_is_cut_off_by_the_database(stack):
    wallet = await stack.funded_wallet(1_000)
    vendor = await stack.vendor()
    # A connection set up exactly as the API's are, which then stops answering mid-transaction
    # while holding the journal head, as a SIGSTOPped API replica would.
    paused = await psycopg.AsyncConnection.connect(stack.database_url)
    await db.configure_session(paused, role=store.API_ROLE, timeouts=db.Timeouts(idle_in_transaction_ms=1_000))
    await paused.execute("SELECT position FROM journal_head WHERE id = 1 FOR UPDATE")
    try:
        started = time.monotonic()
        reply = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 10)
        elapsed_s = time.monotonic() - started
        assert reply.status == 201, reply.text
        assert elapsed_s < 8, f"the write waited {elapsed_s:.1f} s behind a paused lock holder"
        try:
            await paused.execute("SELECT 1")
            cut = False
        except psycopg.Error:  # 25P03: terminating connection due to idle-in-transaction timeout
            cut = True
        assert cut, "the paused session still holds its transaction"
    finally:
        await paused.close()
