"""Configuration: every limit named, with its unit, read from the environment once.

| variable | default | meaning |
|---|---|---|
| LEDGER_DATABASE_URL | postgresql://postgres@127.0.0.1:5432/postgres | the journal database |
| LEDGER_DB_ROLE | ledger_api | role the API switches to (`SET ROLE`) on every connection |
| LEDGER_NATS_URL | nats://127.0.0.1:4222 | NATS with JetStream |
| LEDGER_HTTP_HOST / LEDGER_HTTP_PORT | 127.0.0.1 / 8080 | API listener |
| LEDGER_HTTP_REUSE_PORT | (unset) | `1`: several API processes share the port (SO_REUSEPORT) |
| LEDGER_METRICS_PORT | (unset) | a separate metrics listener; unset serves /metrics on the API |
| LEDGER_BATCH_MAX | 256 | transfers committed in one transaction at most |
| LEDGER_QUEUE_MAX | 4096 | transfers waiting for the committer; a full queue answers 503 |
| LEDGER_BATCH_LINGER_MS | 1 | how long the committer waits for a batch to fill once work arrives |
| LEDGER_COMMIT_RETRIES_MAX | 8 | whole-batch retries on a serialization failure |
| LEDGER_POOL_SIZE_MAX | 8 | database connections of one API process for reads |
| LEDGER_WAIT_MS_MAX | 10000 | longest `wait_ms` a projection read may ask for |
| LEDGER_REQUEST_TIMEOUT_MS | 15000 | a request is answered by then, whatever happens below |
| LEDGER_RATE_PER_S / LEDGER_RATE_BURST | 0 (off) / 200 | per-principal token bucket |
"""

from __future__ import annotations

import os
from dataclasses import dataclass

BODY_BYTES_MAX = 64 * 1024
IDEMPOTENCY_KEY_CHARS_MAX = 255


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names the variable."""


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_role: str = "ledger_api"
    nats_url: str = "nats://127.0.0.1:4222"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_reuse_port: bool = False
    metrics_port: int | None = None
    batch_max: int = 256
    queue_max: int = 4096
    batch_linger_ms: float = 1.0
    commit_retries_max: int = 8
    pool_size_max: int = 8
    wait_ms_max: int = 10_000
    request_timeout_ms: int = 15_000
    rate_per_s: float = 0.0
    rate_burst: int = 200
    body_bytes_max: int = BODY_BYTES_MAX
    outbox_sweep_interval_ms: int = 500
    projector_name: str = "main"

    def __post_init__(self) -> None:
        assert 1 <= self.batch_max <= 10_000, "batch_max out of range"
        assert 1 <= self.queue_max, "queue_max must be positive"
        assert 0 <= self.commit_retries_max <= 100, "commit_retries_max out of range"
        assert 1 <= self.pool_size_max <= 200, "pool_size_max out of range"

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        metrics = env.get("LEDGER_METRICS_PORT")
        values = dict(
            database_url=env.get("LEDGER_DATABASE_URL", cls.database_url),
            db_role=env.get("LEDGER_DB_ROLE", cls.db_role),
            nats_url=env.get("LEDGER_NATS_URL", cls.nats_url),
            http_host=env.get("LEDGER_HTTP_HOST", cls.http_host),
            http_port=_int("LEDGER_HTTP_PORT", cls.http_port),
            http_reuse_port=env.get("LEDGER_HTTP_REUSE_PORT", "") in ("1", "true", "yes"),
            metrics_port=int(metrics) if metrics else None,
            batch_max=_int("LEDGER_BATCH_MAX", cls.batch_max),
            queue_max=_int("LEDGER_QUEUE_MAX", cls.queue_max),
            batch_linger_ms=float(env.get("LEDGER_BATCH_LINGER_MS", cls.batch_linger_ms)),
            commit_retries_max=_int("LEDGER_COMMIT_RETRIES_MAX", cls.commit_retries_max),
            pool_size_max=_int("LEDGER_POOL_SIZE_MAX", cls.pool_size_max),
            wait_ms_max=_int("LEDGER_WAIT_MS_MAX", cls.wait_ms_max),
            request_timeout_ms=_int("LEDGER_REQUEST_TIMEOUT_MS", cls.request_timeout_ms),
            rate_per_s=float(env.get("LEDGER_RATE_PER_S", cls.rate_per_s)),
            rate_burst=_int("LEDGER_RATE_BURST", cls.rate_burst),
        )
        values.update(overrides)
        return cls(**values)
