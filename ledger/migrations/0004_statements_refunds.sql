-- v2 entries: a kind, the transfer a refund returns, and (reserved for holds) a hold id.
ALTER TABLE journal ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'transfer';
ALTER TABLE journal ADD COLUMN IF NOT EXISTS refund_of UUID;
ALTER TABLE journal ADD COLUMN IF NOT EXISTS hold_id UUID;

-- Each posting keeps its account's balance right after the entry, written by the committer in
-- the entry's own transaction: a statement is one range scan and a balance at a position one
-- lookup on postings_by_account (account_id, position). Postings written before this migration
-- get theirs from a running sum in 0007, and the column becomes NOT NULL in 0008: schema changes
-- and writes stay in separate transactions, as CockroachDB requires.
ALTER TABLE postings ADD COLUMN IF NOT EXISTS balance_after INT8;


-- A balance as of a time: the last entry committed at or before it. The committer keeps
-- committed_at non-decreasing along positions, so this index answers with one lookup.
CREATE INDEX IF NOT EXISTS journal_by_time ON journal (committed_at, position);

-- The running total refunded per original payment: read and updated by the batch decision in
-- the same SERIALIZABLE transaction as the refund entries, so racing refunds never pass it.
-- The CHECK repeats the rule in the database, whatever the application does.
CREATE TABLE IF NOT EXISTS refund_totals (
    transfer_id      UUID PRIMARY KEY,
    transfer_amount  INT8 NOT NULL,
    refunded         INT8 NOT NULL,
    CONSTRAINT refunds_within_transfer CHECK (refunded >= 0 AND refunded <= transfer_amount)
);

-- The vendor's verification shows how much of the payment was refunded.
ALTER TABLE verifications ADD COLUMN IF NOT EXISTS refunded_amount INT8 NOT NULL DEFAULT 0;
