"""Configuration: every limit named, with its unit, read from the environment once and checked.

| variable | default | range | meaning |
|---|---|---|---|
| LEDGER_DATABASE_URL | postgresql://postgres@127.0.0.1:5432/postgres | not empty | the journal database |
| LEDGER_DB_ROLE | ledger_api | not empty | role the API switches to (`SET ROLE`) on every connection |
| LEDGER_NATS_URL | nats://127.0.0.1:4222 | not empty | NATS with JetStream (a cluster's seeds, comma-separated) |
| LEDGER_HTTP_HOST / LEDGER_HTTP_PORT | 127.0.0.1 / 8080 | not empty / 0..65535 | API listener |
| LEDGER_HTTP_REUSE_PORT | (unset) | 1, true, yes / 0, false, no | `1`: several API processes share the port (SO_REUSEPORT) |
| LEDGER_METRICS_PORT | (unset) | 0..65535 | a separate metrics listener; unset serves /metrics on the API |
| LEDGER_BATCH_MAX | 256 | 1..10000 | transfers committed in one transaction at most |
| LEDGER_BATCH_ITEMS_MAX | 1000 | 1..10000 | items one `POST /v1/batches` may carry (the contract's cap; 10,000 at most) |
| LEDGER_QUEUE_MAX | 4096 | 1..1000000 | transfers waiting for the committer; a full queue answers 503 |
| LEDGER_BATCH_LINGER_MS | 1 | 0..1000 | how long the committer waits for a batch to fill once work arrives |
| LEDGER_COMMIT_RETRIES_MAX | 8 | 0..100 | whole-batch retries on a serialization failure |
| LEDGER_POOL_SIZE_MAX | 8 | 1..200 | database connections of one API process for reads |
| LEDGER_WAIT_MS_MAX | 10000 | 0..600000 | longest `wait_ms` a projection read may ask for |
| LEDGER_REQUEST_TIMEOUT_MS | 15000 | 1..600000 | a request is answered by then, whatever happens below |
| LEDGER_RATE_PER_S / LEDGER_RATE_BURST | 500 / 1000 | 0..1000000 / 1..1000000 | per-principal token bucket, per API process (0: off) |
| LEDGER_STREAM_REPLICAS | 1 | 1..5 | JetStream replicas of the `LEDGER` stream (3 on a NATS cluster) |
| LEDGER_STREAM_MAX_AGE_S | 604800 (7 days) | 1..31536000 | how long the `LEDGER` stream keeps an event (the journal keeps it forever) |
| LEDGER_STREAM_MAX_BYTES | 1073741824 (1 GiB) | 1048576..1099511627776 | the stream's size cap; the oldest events go first |
| LEDGER_LOCK_TIMEOUT_MS | 5000 | 100..600000 | a statement waiting longer for a lock fails (55P03) and its batch is retried |
| LEDGER_STATEMENT_TIMEOUT_MS | 10000 | 100..600000 | one SQL statement at most |
| LEDGER_IDLE_IN_TRANSACTION_TIMEOUT_MS | 10000 | 100..600000 | the database ends a session idle inside a transaction (a paused process) |
| LEDGER_WAITERS_MAX | 1000 | 1..100000 | concurrent `min_position` waits per API process; past it 503 `too_many_waiters` |
| LEDGER_AUTH_CACHE_MS | 500 | 0..1000 | how long a token lookup (found or not) is reused; a revoked token fails everywhere within 1 s |
| LEDGER_IDEMPOTENCY_RETENTION_S | 604800 (7 days) | 86400..31536000 | how long an idempotency key is remembered; a retry after it is a new request |
| LEDGER_CHECKPOINT_INTERVAL_S | 0 (off) | 0..86400 | the tree follower signs the Merkle tree head this often (when it grew) |
| LEDGER_TREE_FOLLOWER | 1 | 1, true, yes / 0, false, no | `0`: this projector process does not keep the Merkle tree (another process does) |
| LEDGER_SIGNING_KEY | .ledger/signing-key.pem | not empty | the Ed25519 private key (PEM) that signs tree heads; created 0600 if missing |
| LEDGER_WEBHOOK_KEY | (unset) | Fernet keys, comma-separated | encrypts webhook secrets at rest: the first key encrypts, every key decrypts (rotation) |
| LEDGER_WEBHOOK_ALLOW_PRIVATE | (unset) | 1, true, yes / 0, false, no | `1`: webhook URLs may resolve to loopback, private or link-local addresses (`ledger dev`) |
| LEDGER_WEBHOOK_CONCURRENCY_MAX | 64 | 1..10000 | webhook attempts in flight in one worker process |
| LEDGER_WEBHOOK_ENDPOINT_CONCURRENCY_MAX | 16 | 1..1000 | webhook attempts in flight to one endpoint, per worker process |
| LEDGER_WEBHOOK_RETENTION_S | 604800 (7 days) | 3600..31536000 | delivered and failed webhook deliveries are deleted this long after the event |

A value that does not parse or is out of range raises `ConfigError`, whose message names the
variable and says why (`LEDGER_BATCH_MAX='abc' is not a whole number`); `ledger` prints it on one
line and exits 2. The checks are plain `if`s, not `assert`s, so `python -O` keeps them, and they
run in `__post_init__`, so `Settings(...)` built in code is checked the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

BODY_BYTES_MAX = 64 * 1024
BATCH_BODY_BYTES_MAX = 4 * 1024 * 1024  # the contract's body limit of `POST /v1/batches`
BATCH_ITEMS_CAP = 10_000  # what LEDGER_BATCH_ITEMS_MAX may be raised to at most
IDEMPOTENCY_KEY_CHARS_MAX = 255

PORT_MAX = 65535
_TRUE = ("1", "true", "yes")
_FALSE = ("", "0", "false", "no")


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names the variable."""


# The environment variable of each setting read from the environment; the others are set in code.
VARIABLES: dict[str, str] = {
    "database_url": "LEDGER_DATABASE_URL",
    "db_role": "LEDGER_DB_ROLE",
    "nats_url": "LEDGER_NATS_URL",
    "http_host": "LEDGER_HTTP_HOST",
    "http_port": "LEDGER_HTTP_PORT",
    "http_reuse_port": "LEDGER_HTTP_REUSE_PORT",
    "metrics_port": "LEDGER_METRICS_PORT",
    "batch_max": "LEDGER_BATCH_MAX",
    "queue_max": "LEDGER_QUEUE_MAX",
    "batch_items_max": "LEDGER_BATCH_ITEMS_MAX",
    "batch_linger_ms": "LEDGER_BATCH_LINGER_MS",
    "commit_retries_max": "LEDGER_COMMIT_RETRIES_MAX",
    "pool_size_max": "LEDGER_POOL_SIZE_MAX",
    "wait_ms_max": "LEDGER_WAIT_MS_MAX",
    "request_timeout_ms": "LEDGER_REQUEST_TIMEOUT_MS",
    "rate_per_s": "LEDGER_RATE_PER_S",
    "rate_burst": "LEDGER_RATE_BURST",
    "stream_replicas": "LEDGER_STREAM_REPLICAS",
    "stream_max_age_s": "LEDGER_STREAM_MAX_AGE_S",
    "stream_max_bytes": "LEDGER_STREAM_MAX_BYTES",
    "lock_timeout_ms": "LEDGER_LOCK_TIMEOUT_MS",
    "statement_timeout_ms": "LEDGER_STATEMENT_TIMEOUT_MS",
    "idle_in_transaction_timeout_ms": "LEDGER_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    "waiters_max": "LEDGER_WAITERS_MAX",
    "auth_cache_ms": "LEDGER_AUTH_CACHE_MS",
    "idempotency_retention_s": "LEDGER_IDEMPOTENCY_RETENTION_S",
    "checkpoint_interval_s": "LEDGER_CHECKPOINT_INTERVAL_S",
    "tree_follower": "LEDGER_TREE_FOLLOWER",
    "signing_key": "LEDGER_SIGNING_KEY",
    "webhook_key": "LEDGER_WEBHOOK_KEY",
    "webhook_allow_private": "LEDGER_WEBHOOK_ALLOW_PRIVATE",
    "webhook_concurrency_max": "LEDGER_WEBHOOK_CONCURRENCY_MAX",
    "webhook_endpoint_concurrency_max": "LEDGER_WEBHOOK_ENDPOINT_CONCURRENCY_MAX",
    "webhook_retention_s": "LEDGER_WEBHOOK_RETENTION_S",
    "hold_sweep_interval_ms": "LEDGER_HOLD_SWEEP_INTERVAL_MS",
    "hold_sweep_batch_max": "LEDGER_HOLD_SWEEP_BATCH_MAX",
}
# The inclusive range of every numeric setting. Strings must not be empty; booleans are booleans.
RANGES: dict[str, tuple[int, int]] = {
    "http_port": (0, PORT_MAX),
    "metrics_port": (0, PORT_MAX),
    "batch_max": (1, 10_000),
    "queue_max": (1, 1_000_000),
    "batch_items_max": (1, BATCH_ITEMS_CAP),
    "batch_linger_ms": (0, 1_000),
    "commit_retries_max": (0, 100),
    "pool_size_max": (1, 200),
    "wait_ms_max": (0, 600_000),
    "request_timeout_ms": (1, 600_000),
    "rate_per_s": (0, 1_000_000),
    "rate_burst": (1, 1_000_000),
    "stream_replicas": (1, 5),
    "stream_max_age_s": (1, 365 * 86_400),
    "stream_max_bytes": (1024 * 1024, 1024**4),
    "lock_timeout_ms": (100, 600_000),
    "statement_timeout_ms": (100, 600_000),
    "idle_in_transaction_timeout_ms": (100, 600_000),
    "waiters_max": (1, 100_000),
    "auth_cache_ms": (0, 1_000),
    "idempotency_retention_s": (86_400, 365 * 86_400),
    "body_bytes_max": (1, 16 * 1024 * 1024),
    "outbox_sweep_interval_ms": (1, 60_000),
    "checkpoint_interval_s": (0, 86_400),
    "webhook_concurrency_max": (1, 10_000),
    "webhook_endpoint_concurrency_max": (1, 1_000),
    "webhook_retention_s": (3_600, 365 * 86_400),
    "hold_sweep_interval_ms": (10, 5_000),
    "hold_sweep_batch_max": (1, 10_000),
}


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
    batch_items_max: int = 1000
    batch_linger_ms: float = 1.0
    commit_retries_max: int = 8
    pool_size_max: int = 8
    wait_ms_max: int = 10_000
    request_timeout_ms: int = 15_000
    rate_per_s: float = 500.0
    rate_burst: int = 1000
    stream_replicas: int = 1
    stream_max_age_s: int = 7 * 86_400
    stream_max_bytes: int = 1024**3
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 10_000
    idle_in_transaction_timeout_ms: int = 10_000
    waiters_max: int = 1_000
    auth_cache_ms: int = 500
    idempotency_retention_s: int = 7 * 86_400
    body_bytes_max: int = BODY_BYTES_MAX
    outbox_sweep_interval_ms: int = 500
    projector_name: str = "main"
    checkpoint_interval_s: int = 0
    tree_follower: bool = True
    signing_key: str = ".ledger/signing-key.pem"
    # Webhooks (`ledger webhooks`): unset key means the API cannot register endpoints (503).
    webhook_key: str | None = None
    webhook_allow_private: bool = False
    webhook_concurrency_max: int = 64
    webhook_endpoint_concurrency_max: int = 16
    webhook_retention_s: int = 7 * 86_400
    # The expiry sweeper of each API process: how often it looks for due holds, and how many it
    # submits per round (the contract releases a hold within 10 s of expiring).
    hold_sweep_interval_ms: int = 1_000
    hold_sweep_batch_max: int = 500

    def __post_init__(self) -> None:
        for field in fields(self):
            _check(field.name, field.type, getattr(self, field.name))
        _check_conninfo(self.database_url)
        _check_webhook_key(self.webhook_key)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Settings from the environment (unset variables keep their defaults), then `overrides`."""
        values: dict[str, object] = {}
        for field in fields(cls):
            variable = VARIABLES.get(field.name)
            text = os.environ.get(variable) if variable else None
            if text is not None and field.name not in overrides:
                values[field.name] = _parse(variable, field.type, text)
        values.update(overrides)
        return cls(**values)


def _check_conninfo(url: str) -> None:
    """A URL libpq cannot parse is a configuration error, not a failure to reach the database."""
    from psycopg import ProgrammingError, conninfo  # the server extra; the client never builds Settings

    try:
        conninfo.conninfo_to_dict(url)
    except ProgrammingError as error:
        message = str(error).strip().splitlines()[0]
        # The URL itself is left out of the message: it may hold a password.
        raise ConfigError(f"{VARIABLES['database_url']} is not a connection string: {message}") from None


def _check_webhook_key(text: str | None) -> None:
    """Every comma-separated key must be a Fernet key (32 url-safe base64 bytes)."""
    if text is None:
        return
    import base64
    import binascii

    for number, key in enumerate(text.split(","), start=1):
        try:
            valid = len(base64.urlsafe_b64decode(key.strip().encode())) == 32
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            # The key itself is left out of the message: it is a secret.
            raise ConfigError(f"{VARIABLES['webhook_key']}: key {number} is not a Fernet key (32 url-safe base64 bytes)")


def _parse(variable: str, kind: str, text: str) -> object:
    """One variable's text as its field's type (annotations are strings: `from __future__`)."""
    if kind == "str":
        return text
    if kind == "bool":
        if text.strip().lower() not in _TRUE + _FALSE:
            raise ConfigError(f"{variable}={text!r} is not one of 1, true, yes, 0, false, no")
        return text.strip().lower() in _TRUE
    if kind == "int | None" and text == "":
        return None
    if kind == "str | None":
        return text or None
    if kind in ("int", "int | None"):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{variable}={text!r} is not a whole number") from None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{variable}={text!r} is not a number") from None


def _check(name: str, kind: str, value: object) -> None:
    """Raise `ConfigError` naming the variable (or, for a setting made only in code, the field)."""
    label = VARIABLES.get(name, name)
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{label}={value!r} must not be empty")
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{label}={value!r} is not true or false")
        return
    if value is None and kind in ("int | None", "str | None"):
        return
    if kind == "str | None":
        _check(name, "str", value)
        return
    whole = kind in ("int", "int | None")
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        raise ConfigError(f"{label}={value!r} is not a {'whole number' if whole else 'number'}")
    low, high = RANGES[name]
    if not low <= value <= high:  # NaN fails this too
        raise ConfigError(f"{label}={value!r} is out of range {low}..{high}")
