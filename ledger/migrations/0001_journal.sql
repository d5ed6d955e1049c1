-- The write model: principals, accounts, balances and the append-only journal.
-- Written in the subset PostgreSQL and CockroachDB both accept (see DESIGN.md): UUID keys,
-- INT8, TEXT, BYTEA, JSONB, TIMESTAMPTZ, no SERIAL, no triggers, no stored procedures.

CREATE TABLE IF NOT EXISTS principals (
    id          UUID PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'client', 'vendor', 'auditor')),
    name        TEXT NOT NULL,
    token_hash  BYTEA NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS accounts (
    id          UUID PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('wallet', 'vendor', 'system')),
    currency    TEXT NOT NULL,
    owner_id    UUID REFERENCES principals (id),
    name        TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS accounts_owner ON accounts (owner_id);

-- The committed balance. `kind` is repeated here so the database itself refuses an overdraft of
-- a wallet or vendor account, whatever the application does.
CREATE TABLE IF NOT EXISTS balances (
    account_id  UUID PRIMARY KEY REFERENCES accounts (id),
    kind        TEXT NOT NULL,
    balance     INT8 NOT NULL DEFAULT 0,
    position    INT8 NOT NULL DEFAULT 0,
    CONSTRAINT no_overdraft CHECK (kind = 'system' OR balance >= 0)
);

-- One row: the position and hash of the last entry. Every batch locks it first, which orders
-- batches across API processes and makes positions gap-free.
CREATE TABLE IF NOT EXISTS journal_head (
    id            INT8 PRIMARY KEY CHECK (id = 1),
    position      INT8 NOT NULL,
    hash          TEXT NOT NULL,
    committed_at  TIMESTAMPTZ
);

INSERT INTO journal_head (id, position, hash, committed_at)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', NULL)
ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS journal (
    position         INT8 PRIMARY KEY CHECK (position >= 1),
    transfer_id      UUID NOT NULL UNIQUE,
    from_account_id  UUID NOT NULL,
    to_account_id    UUID NOT NULL,
    amount           INT8 NOT NULL CHECK (amount >= 1),
    currency         TEXT NOT NULL,
    reference        TEXT NOT NULL,
    metadata         JSONB NOT NULL,
    committed_at     TIMESTAMPTZ NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS postings (
    position    INT8 NOT NULL,
    account_id  UUID NOT NULL,
    amount      INT8 NOT NULL,
    PRIMARY KEY (position, account_id)
);

CREATE INDEX IF NOT EXISTS postings_by_account ON postings (account_id, position);

-- Only answered-201 requests are remembered: a 4xx does not use up its key.
CREATE TABLE IF NOT EXISTS idempotency (
    principal_id  UUID NOT NULL,
    key           TEXT NOT NULL,
    request_hash  BYTEA NOT NULL,
    position      INT8 NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, key)
);

-- Written in the same transaction as the entry, deleted once the event is published.
CREATE TABLE IF NOT EXISTS outbox (
    position    INT8 PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
