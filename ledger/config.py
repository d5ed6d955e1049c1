"""Configuration: every setting declared once, in its process's section, read from the environment once

Each setting has its environment variable, default, range and meaning in one declaration, and is
checked when its section is built. The sections follow the processes, so a reader sees what each
one depends on:

| section | read by |
|---|---|
| `database` | every process and command (the URL; the timeouts of every service connection) |
| `nats` | the API, the projector and the webhook worker (the `LEDGER` stream) |
| `http` | the API's listener; the metrics listener of the API, the projector and the webhook worker |
| `api` | the API process: reads, limits, authentication |
| `committer` | the write side inside each API process: group commit, outbox, idempotency, hold expiry |
| `projector` | the projector, and the API and the audit that read its read models |
| `proofs` | the tree follower (in the projector process) and `ledger checkpoint` |
| `webhooks` | the webhook worker, and the API that registers endpoints (their secrets' key) |
| `audit` | `ledger audit` |
| `console` | the API process, which serves the web console under `/console/` |
| `log` | every process |

Each setting is a field declared with `setting(...)`: the README's table of variables is
`markdown_table()`, and tests/ledger/test_settings.py checks that it is current. A value that does
not parse or is out of range raises `ConfigError`, whose message names the variable and says why
(`LEDGER_BATCH_MAX='abc' is not a whole number`); `ledger` prints it on one line and exits 2. The
checks are plain `if`s, not `assert`s, so `python -O` keeps them, and they run in `__post_init__`,
so a section built in code (`Settings().replace(api={"waiters_max": 50})`) is checked the same way.
No other module reads the environment for a setting.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from schemas.batches import BATCH_ITEMS_CAP  # what LEDGER_BATCH_ITEMS_MAX may be raised to at most

BODY_BYTES_MAX = 64 * 1024
BATCH_BODY_BYTES_MAX = 4 * 1024 * 1024  # the contract's body limit of `POST /v1/batches`
IDEMPOTENCY_KEY_CHARS_MAX = 255

PORT_MAX = 65535
DAY_S = 86_400
YEAR_S = 365 * DAY_S
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")
_TRUE = ("1", "true", "yes")
_FALSE = ("", "0", "false", "no")


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Declaration:
    """What a field's metadata says about it. `variable` None: the setting is made in code only.
    `range`: the inclusive bounds of a number; `choices`: the words a text may be (any case);
    `check`: a further check of a value of the right type, raising `ConfigError`, with `allowed`
    saying what it accepts in the README. `shown`: the default as the README shows it, when its
    plain value needs a word (`0 (off)`)."""

    meaning: str
    variable: str | None = None
    range: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[str, Any], None] | None = None
    allowed: str | None = None
    shown: str | None = None


def setting(default: Any, meaning: str, **declared: Any) -> Any:
    """A field of a section, with everything said about it in one place (see `Declaration`)."""
    return field(default=default, metadata={"setting": Declaration(meaning, **declared)})


def declaration(of: dataclasses.Field) -> Declaration:
    return of.metadata["setting"]


def _conninfo(label: str, url: str) -> None:
    """A URL libpq cannot parse is a configuration error, not a failure to reach the database."""
    from psycopg import ProgrammingError, conninfo  # the server extra; the client never builds Settings

    try:
        conninfo.conninfo_to_dict(url)
    except ProgrammingError as error:
        message = str(error).strip().splitlines()[0]
        # The URL itself is left out of the message: it may hold a password.
        raise ConfigError(f"{label} is not a connection string: {message}") from None


def _fernet_keys(label: str, text: str | None) -> None:
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
            raise ConfigError(f"{label}: key {number} is not a Fernet key (32 url-safe base64 bytes)")


class Section:
    """A group of settings read by the same processes; every field is checked when it is built."""

    def __post_init__(self) -> None:
        for each in fields(self):
            _check(each, getattr(self, each.name))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any):
        """The section from the environment (unset variables keep their defaults), then `overrides`."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for each in fields(cls):
            variable = declaration(each).variable
            text = environ.get(variable) if variable else None
            if text is not None and each.name not in overrides:
                values[each.name] = _parse(variable, each.type, text)
        return cls(**values, **overrides)


@dataclass(frozen=True, kw_only=True)
class Database(Section):
    url: str = setting(
        "postgresql://postgres@127.0.0.1:5432/postgres", "the journal database (CockroachDB in production)",
        variable="LEDGER_DATABASE_URL", check=_conninfo, allowed="a libpq URL")
    lock_timeout_ms: int = setting(
        5_000, "a statement waiting longer for a lock fails (55P03) and its batch is retried",
        variable="LEDGER_LOCK_TIMEOUT_MS", range=(100, 600_000))
    statement_timeout_ms: int = setting(
        10_000, "one SQL statement at most", variable="LEDGER_STATEMENT_TIMEOUT_MS", range=(100, 600_000))
    idle_in_transaction_timeout_ms: int = setting(
        10_000, "the database ends a session idle inside a transaction (a paused process) and frees its locks",
        variable="LEDGER_IDLE_IN_TRANSACTION_TIMEOUT_MS", range=(100, 600_000))


@dataclass(frozen=True, kw_only=True)
class Nats(Section):
    url: str = setting(
        "nats://127.0.0.1:4222", "NATS with JetStream (a cluster's seeds, comma-separated)", variable="LEDGER_NATS_URL")
    stream_replicas: int = setting(
        1, "JetStream replicas of the `LEDGER` stream (3 on a NATS cluster)",
        variable="LEDGER_STREAM_REPLICAS", range=(1, 5))
    stream_max_age_s: int = setting(
        7 * DAY_S, "how long the `LEDGER` stream keeps an event. Safe at any value: the journal is the truth, and"
        " a follower that finds an event gone reads the journal from its cursor",
        variable="LEDGER_STREAM_MAX_AGE_S", range=(1, YEAR_S), shown="604800 (7 days)")
    stream_max_bytes: int = setting(
        1024**3, "the `LEDGER` stream's size cap; the oldest events go first",
        variable="LEDGER_STREAM_MAX_BYTES", range=(1024 * 1024, 1024**4), shown="1073741824 (1 GiB)")


@dataclass(frozen=True, kw_only=True)
class Http(Section):
    host: str = setting("127.0.0.1", "the address the API and every metrics listener bind", variable="LEDGER_HTTP_HOST")
    port: int = setting(8080, "the API listener's port", variable="LEDGER_HTTP_PORT", range=(0, PORT_MAX))
    reuse_port: bool = setting(
        False, "`1`: several `ledger api` processes share the port (SO_REUSEPORT)", variable="LEDGER_HTTP_REUSE_PORT")
    metrics_port: int | None = setting(
        None, "a separate `/metrics` listener of each process (API, projector, webhook worker); unset: the API"
        " serves `/metrics` on its own port", variable="LEDGER_METRICS_PORT", range=(0, PORT_MAX))


@dataclass(frozen=True, kw_only=True)
class Api(Section):
    db_role: str = setting(
        "ledger_api", "the role every API connection switches to (`SET ROLE`)", variable="LEDGER_DB_ROLE")
    pool_size_max: int = setting(
        8, "database connections of one API process for reads", variable="LEDGER_POOL_SIZE_MAX", range=(1, 200))
    wait_ms_max: int = setting(
        10_000, "the longest `wait_ms` a projection read may ask for", variable="LEDGER_WAIT_MS_MAX",
        range=(0, 600_000))
    request_timeout_ms: int = setting(
        15_000, "a request is answered by then, whatever happens below", variable="LEDGER_REQUEST_TIMEOUT_MS",
        range=(1, 600_000))
    rate_per_s: float = setting(
        500.0, "per-principal token bucket of each API process: tokens a second (429 with `Retry-After`; 0: off)",
        variable="LEDGER_RATE_PER_S", range=(0, 1_000_000), shown="500")
    rate_burst: int = setting(
        1000, "per-principal token bucket of each API process: its size", variable="LEDGER_RATE_BURST",
        range=(1, 1_000_000))
    waiters_max: int = setting(
        1_000, "concurrent `min_position` waits per API process; past it 503 `too_many_waiters`",
        variable="LEDGER_WAITERS_MAX", range=(1, 100_000))
    auth_cache_ms: int = setting(
        500, "how long a token lookup (found or not) is reused; a revoked token fails everywhere within 1 s",
        variable="LEDGER_AUTH_CACHE_MS", range=(0, 1_000))
    body_bytes_max: int = setting(BODY_BYTES_MAX, "a request body's size at most", range=(1, 16 * 1024 * 1024))
    batch_items_max: int = setting(
        1000, "items one `POST /v1/batches` may carry (the contract's cap; 10,000 at most)",
        variable="LEDGER_BATCH_ITEMS_MAX", range=(1, BATCH_ITEMS_CAP))


@dataclass(frozen=True, kw_only=True)
class Committer(Section):
    batch_max: int = setting(
        256, "transfers committed in one transaction at most", variable="LEDGER_BATCH_MAX", range=(1, 10_000))
    queue_max: int = setting(
        4096, "transfers waiting for the committer; a full queue answers 503 `queue_full`",
        variable="LEDGER_QUEUE_MAX", range=(1, 1_000_000))
    batch_linger_ms: float = setting(
        1.0, "how long the committer waits for a batch to fill once work arrives", variable="LEDGER_BATCH_LINGER_MS",
        range=(0, 1_000), shown="1")
    commit_retries_max: int = setting(
        8, "whole-batch retries on a serialization failure", variable="LEDGER_COMMIT_RETRIES_MAX", range=(0, 100))
    idempotency_retention_s: int = setting(
        7 * DAY_S, "how long an idempotency key is remembered; a retry after it is a new request",
        variable="LEDGER_IDEMPOTENCY_RETENTION_S", range=(DAY_S, YEAR_S), shown="604800 (7 days)")
    outbox_sweep_interval_ms: int = setting(
        500, "how often the outbox looks for events the bus has not acknowledged", range=(1, 60_000))
    # The contract releases a hold within 10 s of expiring.
    hold_sweep_interval_ms: int = setting(
        1_000, "how often the expiry sweeper of each API process looks for due holds",
        variable="LEDGER_HOLD_SWEEP_INTERVAL_MS", range=(10, 5_000))
    hold_sweep_batch_max: int = setting(
        500, "expired holds the sweeper releases per round at most", variable="LEDGER_HOLD_SWEEP_BATCH_MAX",
        range=(1, 10_000))


@dataclass(frozen=True, kw_only=True)
class Projector(Section):
    name: str = setting("main", "the projector whose cursor and read models are kept and read (tests run several)")


@dataclass(frozen=True, kw_only=True)
class Proofs(Section):
    tree_follower: bool = setting(
        True, "`0`: this projector process does not keep the Merkle tree (run it in one projector process of"
        " several; proofs then hash the tail from the journal, up to 10,000 entries)", variable="LEDGER_TREE_FOLLOWER")
    sign_interval_s: int = setting(
        0, "the tree follower signs the Merkle tree head this often, when it grew (`ledger dev`: every 10 s)",
        variable="LEDGER_CHECKPOINT_INTERVAL_S", range=(0, DAY_S), shown="0 (off)")
    signing_key: str = setting(
        ".ledger/signing-key.pem", "the Ed25519 private key (PEM) that signs tree heads and `ledger checkpoint`;"
        " created 0600 if missing", variable="LEDGER_SIGNING_KEY")


@dataclass(frozen=True, kw_only=True)
class Webhooks(Section):
    # Unset, the API cannot register endpoints (503) and the worker does not start.
    key: str | None = setting(
        None, "Fernet keys, comma-separated: encrypt webhook secrets at rest (the first encrypts, every one"
        " decrypts: rotation); `ledger dev` generates one into `.ledger/webhook.key`",
        variable="LEDGER_WEBHOOK_KEY", check=_fernet_keys, allowed="Fernet keys")
    allow_private: bool = setting(
        False, "`1`: webhook URLs may resolve to loopback, private or link-local addresses (`ledger dev` sets it)",
        variable="LEDGER_WEBHOOK_ALLOW_PRIVATE")
    concurrency_max: int = setting(
        64, "webhook attempts in flight in one worker process", variable="LEDGER_WEBHOOK_CONCURRENCY_MAX",
        range=(1, 10_000))
    endpoint_concurrency_max: int = setting(
        16, "webhook attempts in flight to one endpoint, per worker process",
        variable="LEDGER_WEBHOOK_ENDPOINT_CONCURRENCY_MAX", range=(1, 1_000))
    retention_s: int = setting(
        7 * DAY_S, "delivered and failed webhook deliveries are deleted this long after the event",
        variable="LEDGER_WEBHOOK_RETENTION_S", range=(3_600, YEAR_S), shown="604800 (7 days)")


@dataclass(frozen=True, kw_only=True)
class Audit(Section):
    public_key: str | None = setting(
        None, "the pinned Ed25519 public key (hex, or a file holding it) a checkpoint must be signed by;"
        " `--public-key` wins", variable="LEDGER_AUDIT_PUBLIC_KEY")


@dataclass(frozen=True, kw_only=True)
class Console(Section):
    enabled: bool = setting(True, "`0`: the API process serves no web console", variable="LEDGER_CONSOLE")
    api_url: str | None = setting(
        None, "the API the console's pages call with the signed-in token; unset: this process, on"
        " `http://127.0.0.1:LEDGER_HTTP_PORT`", variable="LEDGER_CONSOLE_API_URL")
    public_key: str | None = setting(
        None, "the operator's Ed25519 public key (hex, or a file holding it) the console's in-browser verifier"
        " pins; unset: the public half of `LEDGER_SIGNING_KEY` when that file is readable here (`ledger dev`)",
        variable="LEDGER_CONSOLE_PUBLIC_KEY")
    secure_cookie: bool = setting(
        False, "`1`: the session cookie is always `Secure` (TLS ends at a proxy in front); else only over TLS",
        variable="LEDGER_CONSOLE_SECURE_COOKIE")


@dataclass(frozen=True, kw_only=True)
class Log(Section):
    level: str = setting("INFO", "the lowest level logged; `--log-level` wins", variable="LEDGER_LOG_LEVEL",
                         choices=LOG_LEVELS)
    format: str | None = setting(
        None, "`json`: one object a line with `request_id`, for a collector; tokens are redacted either way",
        variable="LEDGER_LOG_FORMAT", shown="unset (text on a terminal, else json)", choices=LOG_FORMATS)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every section, each built from the environment by `from_env` or with its defaults."""

    database: Database = field(default_factory=Database)
    nats: Nats = field(default_factory=Nats)
    http: Http = field(default_factory=Http)
    api: Api = field(default_factory=Api)
    committer: Committer = field(default_factory=Committer)
    projector: Projector = field(default_factory=Projector)
    proofs: Proofs = field(default_factory=Proofs)
    webhooks: Webhooks = field(default_factory=Webhooks)
    audit: Audit = field(default_factory=Audit)
    console: Console = field(default_factory=Console)
    log: Log = field(default_factory=Log)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Mapping[str, object]) -> Settings:
        """Settings from the environment (unset variables keep their defaults), then `overrides`,
        by section: `Settings.from_env(http={"port": 0})`."""
        _known_sections(overrides)
        return cls(**{each.name: each.default_factory.from_env(environ, **overrides.get(each.name, {}))
                      for each in fields(cls)})

    def replace(self, **changes: Mapping[str, object]) -> Settings:
        """A copy with some settings changed, by section: `settings.replace(http={"port": 0})`."""
        _known_sections(changes)
        return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), **values)
                                            for name, values in changes.items()})


def _known_sections(changes: Mapping[str, object]) -> None:
    unknown = set(changes) - {each.name for each in fields(Settings)}
    if unknown:
        raise TypeError(f"no settings section named {', '.join(sorted(unknown))}")


def declared() -> list[tuple[str, dataclasses.Field]]:
    """Every setting as (section name, field), in declaration order."""
    return [(section.name, each) for section in fields(Settings) for each in fields(section.default_factory)]


def markdown_table() -> str:
    """The README's table of environment variables, one row per variable, from the declarations."""
    rows = ["| variable | default | range | meaning |", "|---|---|---|---|"]
    for _, each in declared():
        about = declaration(each)
        if about.variable:
            default = shown_default(each)
            rows.append(f"| `{about.variable}` | {default} | {_range_text(each, about)} | {about.meaning} |")
    return "\n".join(rows) + "\n"


def shown_default(each: dataclasses.Field) -> str:
    """A setting's default as the README shows it: as set in the environment, unset, or `shown`."""
    value = each.default
    if declaration(each).shown:
        return declaration(each).shown
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _range_text(each: dataclasses.Field, about: Declaration) -> str:
    if about.range is not None:
        return f"{about.range[0]}..{about.range[1]}"
    if about.choices:
        return ", ".join(about.choices)
    if each.type == "bool":
        return "1, true, yes / 0, false, no"
    return about.allowed or "not empty"


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


def _check(each: dataclasses.Field, value: object) -> None:
    """Raise `ConfigError` naming the variable (or, for a setting made only in code, the field)."""
    about = declaration(each)
    label = about.variable or each.name
    _check_type(label, each.type, about.range, value)
    if about.choices and value is not None and value.upper() not in (choice.upper() for choice in about.choices):
        raise ConfigError(f"{label}={value!r} is not one of {', '.join(about.choices)}")
    if about.check is not None:
        about.check(label, value)


def _check_type(label: str, kind: str, bounds: tuple[int, int] | None, value: object) -> None:
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
        _check_type(label, "str", bounds, value)
        return
    whole = kind in ("int", "int | None")
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        raise ConfigError(f"{label}={value!r} is not a {'whole number' if whole else 'number'}")
    low, high = bounds
    if not low <= value <= high:  # NaN fails this too
        raise ConfigError(f"{label}={value!r} is out of range {low}..{high}")


if __name__ == "__main__":
    print(markdown_table(), end="")
