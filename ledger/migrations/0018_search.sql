-- Searching entries by metadata, kind and time (issue 26). The metadata's inverted index is
-- written in each database's own form (PostgreSQL's `jsonb_path_ops`, one index entry per
-- key/value pair; CockroachDB's only JSONB inverted index, which already keys on pairs), so it is
-- created by `ledger.dialect.metadata_index_ddl` after the migrations; ledger/store/search.py
-- says which index answers which filter.

-- Control changes (kind `account`, issue 26) name their account here; 0017 adds the same column,
-- and whichever runs first adds it.
ALTER TABLE journal ADD COLUMN IF NOT EXISTS account_id UUID;

-- `kind=` for the rare kinds (refunds, holds and their steps, control changes): a partial index
-- that transfers, nearly every entry, never enter, so the bulk write path pays nothing for it.
CREATE INDEX IF NOT EXISTS journal_by_kind ON journal (kind, position) WHERE kind <> 'transfer';

-- A statement asked `kind=account`: the account's control changes, which have no postings.
CREATE INDEX IF NOT EXISTS journal_account_entries ON journal (account_id, position) WHERE account_id IS NOT NULL;
