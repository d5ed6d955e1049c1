"""Prometheus metrics, all named `ledger_*`, with units in the names."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter("ledger_http_requests_total", "HTTP requests answered.", ["route", "method", "status"])
HTTP_SECONDS = Histogram(
    "ledger_http_request_duration_seconds",
    "HTTP request latency.",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
BATCH_SIZE = Histogram(
    "ledger_commit_batch_size", "Transfers per committed batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
COMMIT_SECONDS = Histogram(
    "ledger_commit_duration_seconds",
    "Time of one batch transaction.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
SERIALIZATION_RETRIES = Counter("ledger_commit_serialization_retries_total", "Batches retried on SQLSTATE 40001.")
QUEUE_DEPTH = Gauge("ledger_commit_queue_depth", "Transfers waiting for the committer.")
PUBLISH_LAG = Gauge(
    "ledger_publish_lag_entries", "Journal entries after the publisher cursor (head - cursor): committed, not yet known published."
)
EVENTS_PUBLISHED = Counter("ledger_events_published_total", "Journal entries published to JetStream.")
EVENTS_FAILED = Counter("ledger_events_publish_failed_total", "Journal entries whose publish failed (left for the sweeper).")
PROJECTOR_WATERMARK = Gauge("ledger_projector_watermark_position", "Contiguous journal position applied to the read models.")
PROJECTOR_LAG_SECONDS = Histogram(
    "ledger_projector_lag_seconds",
    "Commit to projected, per entry.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DOORBELL_SUBSCRIBE_FAILURES = Counter(
    "ledger_doorbell_subscribe_failures_total",
    "Failed subscriptions to the journal's events while NATS was connected (the follower then reads the journal"
    " without doorbells).", ["consumer"])
PROJECTOR_GAP_FILLS = Counter("ledger_projector_gap_fills_total", "Entries applied from the journal without an event for them.")
PROJECTOR_FORGED_EVENTS = Counter(
    "ledger_projector_mismatched_events_total", "Events whose transfer_id or hash differ from the journal at their position."
)
AUTH_LOOKUPS = Counter(
    "ledger_auth_lookups_total", "Token lookups that reached the database (the rest came from the cache).", ["result"]
)
READINESS_PROBES = Counter("ledger_readiness_probes_total", "Database probes behind /readyz.", ["result"])
WAITERS = Gauge("ledger_projection_waiters", "Requests waiting for the projection to reach their min_position.")
WEBHOOK_DELIVERIES = Counter(
    "ledger_webhook_deliveries_total", "Webhook attempts by outcome: delivered, retried (will be again), failed (gave up).",
    ["outcome"],
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "ledger_webhook_attempt_duration_seconds", "One webhook POST, from sending to the receiver's answer (or the timeout).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOK_DELIVERY_LATENCY_SECONDS = Histogram(
    "ledger_webhook_delivery_latency_seconds", "Commit of the entry to the receiver's 2xx, per delivered event.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
WEBHOOK_OLDEST_UNDELIVERED_SECONDS = Gauge(
    "ledger_webhook_oldest_undelivered_age_seconds", "Age (since commit) of the oldest event not yet delivered or failed."
)
WEBHOOK_CHECKPOINT = Gauge("ledger_webhook_checkpoint_position", "Journal position up to which deliveries are written.")
WEBHOOK_IN_FLIGHT = Gauge("ledger_webhook_deliveries_held", "Claimed webhook deliveries in this worker process: in flight or waiting for a slot.")
WEBHOOK_RECORD_FAILURES = Counter(
    "ledger_webhook_record_failures_total",
    "Webhook attempts whose outcome could not be recorded (their rows are attempted again once the lease ends).",
)
HOLDS_EXPIRED = Counter("ledger_holds_expired_total", "Holds released by this process's expiry sweeper")
TREE_HEADS_FORKED = Gauge(
    "ledger_tree_heads_forked",
    "1 when the tree follower's last signing round found the journal's tree not an extension of the last"
    " signed tree head (RFC 9162 consistency): it signs nothing until it is again; 0 when that check passed.",
)
FOLLOWER_STANDBY_UNCONFIRMED = Counter(
    "ledger_follower_standby_unconfirmed_total",
    "Steps of a journal follower held back because the synchronous standby did not confirm the journal head in time.",
    ["follower"],
)
