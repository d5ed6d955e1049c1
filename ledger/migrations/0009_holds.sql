-- Holds (issue 13): the write-side state of every hold, read and updated by the batch decision in
-- the same SERIALIZABLE transaction as the hold's journal entries, so exactly one closing step
-- (capture, void or expiry) of a hold ever commits. The journal stays the truth: every step is
-- an entry through the currency's holding account, and the audit replays this table from it.
CREATE TABLE IF NOT EXISTS holds (
    id               UUID PRIMARY KEY,
    from_account_id  UUID NOT NULL,
    to_account_id    UUID NOT NULL,
    amount           INT8 NOT NULL,
    currency         TEXT NOT NULL,
    reference        TEXT NOT NULL,
    metadata         JSONB NOT NULL,
    status           TEXT NOT NULL,
    captured_amount  INT8 NOT NULL DEFAULT 0,
    expires_at       TIMESTAMPTZ NOT NULL,
    position         INT8 NOT NULL,
    closed_position  INT8,
    transfer_id      UUID,
    CONSTRAINT hold_status CHECK (status IN ('pending', 'captured', 'voided', 'expired')),
    CONSTRAINT captured_within_hold CHECK (amount >= 1 AND captured_amount >= 0 AND captured_amount <= amount),
    CONSTRAINT closed_once CHECK ((status = 'pending') = (closed_position IS NULL))
);

-- The expiry sweeper: pending holds by expiry.
CREATE INDEX IF NOT EXISTS holds_due ON holds (status, expires_at);

-- An account's `held`: its pending holds as payer.
CREATE INDEX IF NOT EXISTS holds_by_payer ON holds (from_account_id, status);
