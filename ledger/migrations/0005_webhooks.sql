-- Vendor webhooks (issue 14). Endpoints are registered through the API; the webhook worker
-- (`ledger webhooks`) follows the journal from its checkpoint and writes one delivery row per
-- event and subscribed endpoint (the outbox of deliveries) in the transaction that moves the
-- checkpoint; its senders claim due rows with a lease (`next_attempt_at` pushed forward).

CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id                 UUID PRIMARY KEY,
    vendor_account_id  UUID NOT NULL REFERENCES accounts (id),
    url                TEXT NOT NULL,
    event_types        JSONB NOT NULL,
    -- The signing secret, Fernet-encrypted with LEDGER_WEBHOOK_KEY (never stored in clear).
    secret_encrypted   TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at         TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS webhook_endpoints_by_vendor ON webhook_endpoints (vendor_account_id, created_at, id);

-- `event_seq` = position * 8 + the event type's rank: one entry may be several events (a capture
-- is `hold.captured` and `transfer.received`), and the seq orders them and is the page cursor.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id       UUID NOT NULL REFERENCES webhook_endpoints (id),
    event_seq         INT8 NOT NULL,
    event_id          UUID NOT NULL,
    type              TEXT NOT NULL,
    position          INT8 NOT NULL,
    payload           TEXT NOT NULL,
    committed_at      TIMESTAMPTZ NOT NULL,
    status            TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          INT8 NOT NULL DEFAULT 0,
    last_status_code  INT8,
    last_error        TEXT,
    next_attempt_at   TIMESTAMPTZ NOT NULL,
    delivered_at      TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, event_seq)
);

-- What the senders look for: each live endpoint's due pending rows, oldest first.
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';

CREATE TABLE IF NOT EXISTS webhook_checkpoint (
    name        TEXT PRIMARY KEY,
    position    INT8 NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
