-- Retention of vendor webhook deliveries (issue 14): the worker deletes delivered and failed rows
-- older than LEDGER_WEBHOOK_RETENTION_S in bounded batches, oldest first; this index finds them
-- without reading the pending rows or the young ones.
CREATE INDEX IF NOT EXISTS webhook_deliveries_settled ON webhook_deliveries (created_at)
    WHERE status IN ('delivered', 'failed');
