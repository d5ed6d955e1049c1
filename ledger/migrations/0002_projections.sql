-- Read models built by the projector from the events. They are caches: `ledger projector
-- rebuild` drops their rows and replays them from the journal.

CREATE TABLE IF NOT EXISTS projector_checkpoint (
    name        TEXT PRIMARY KEY,
    position    INT8 NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS projected_balances (
    account_id  UUID PRIMARY KEY,
    currency    TEXT NOT NULL,
    balance     INT8 NOT NULL,
    position    INT8 NOT NULL
);

CREATE TABLE IF NOT EXISTS verifications (
    vendor_account_id  UUID NOT NULL,
    position           INT8 NOT NULL,
    transfer_id        UUID NOT NULL UNIQUE,
    payer_account_id   UUID NOT NULL,
    amount             INT8 NOT NULL,
    currency           TEXT NOT NULL,
    reference          TEXT NOT NULL,
    committed_at       TEXT NOT NULL,
    hash               TEXT NOT NULL,
    projected_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (vendor_account_id, position)
);

-- Signed heads (`ledger checkpoint`): an older signature still catches a rewritten history.
CREATE TABLE IF NOT EXISTS signed_checkpoints (
    position    INT8 PRIMARY KEY,
    hash        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    signature   TEXT NOT NULL,
    signed_at   TIMESTAMPTZ NOT NULL
);
