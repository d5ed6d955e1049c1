-- The gap-free journal is the outbox: one row holds the last position whose event JetStream has
-- acknowledged, and everything after it up to the head is still to be published. It replaces
-- one outbox row per entry (and the transaction that deleted it after the publish).
CREATE TABLE IF NOT EXISTS publish_cursor (
    id          INT8 PRIMARY KEY CHECK (id = 1),
    position    INT8 NOT NULL CHECK (position >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Start just before the oldest entry the outbox still held (every entry before it was
-- published), or at the head when the outbox was empty. Republishing a few is harmless:
-- JetStream drops repeats by Nats-Msg-Id and consumers deduplicate by position.
INSERT INTO publish_cursor (id, position)
SELECT 1, coalesce((SELECT min(position) - 1 FROM outbox), (SELECT position FROM journal_head WHERE id = 1), 0)
ON CONFLICT (id) DO NOTHING;

DROP TABLE IF EXISTS outbox;
