-- Bearer tokens apart from principals, so a principal can hold several (rotation) and each can be
-- revoked. Only the SHA-256 of a token is stored. The first token of every principal made before
-- this migration moves over unchanged, so existing tokens keep working.

CREATE TABLE IF NOT EXISTS tokens (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    principal_id  UUID NOT NULL REFERENCES principals (id),
    token_hash    BYTEA NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS tokens_by_principal ON tokens (principal_id, created_at);

INSERT INTO tokens (principal_id, token_hash, created_at)
    SELECT id, token_hash, created_at FROM principals WHERE token_hash IS NOT NULL
    ON CONFLICT (token_hash) DO NOTHING;

ALTER TABLE principals ALTER COLUMN token_hash DROP NOT NULL;

-- The idempotency sweeper deletes keys older than the retention by age.
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
