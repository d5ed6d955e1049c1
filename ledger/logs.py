"""Logs: one JSON object per line for collectors, plain text for a person at a terminal.

Every line of a request carries its `request_id` (the `X-Request-Id` the API echoes), taken from
a context variable the API middleware sets, so one request can be followed across the API, the
committer and the NATS event it produced. Tokens, bearer headers and URL passwords are redacted
before any handler sees them: a log line is never a way to steal a credential.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys

from ledger.config import LOG_FORMATS

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REDACTED = "[redacted]"

# Bearer credentials, the service's own tokens (`lt_` + urlsafe base64) and the password part of
# a URL such as postgresql://user:password@host.
_SECRETS = (
    (re.compile(r"(Bearer\s+)[A-Za-z0-9_\-.~+/]+=*", re.IGNORECASE), r"\1" + REDACTED),
    (re.compile(r"\blt_[A-Za-z0-9_\-]+"), "lt_" + REDACTED),
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1" + REDACTED + "@"),
)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites the message, string extras and the traceback of a record before it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "request_id"?, ...extras, "exc"?}`, one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        line.update(_extras(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}


def _timestamp(created: float) -> str:
    moment = dt.datetime.fromtimestamp(created, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def chosen_format(named: str | None, default: str | None = None) -> str:
    """The format `named` by the settings (LEDGER_LOG_FORMAT) wins; then the caller's default; then
    text at a terminal, JSON elsewhere."""
    if named is not None:
        return named.lower()
    if default is not None:
        return default
    return "text" if sys.stderr.isatty() else "json"


def configure(*, level: str, log_format: str) -> None:
    """Replace the root handlers with one stderr handler that redacts, then formats."""
    assert log_format in LOG_FORMATS, f"unknown log format {log_format}"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)


# Modules whose errors are outages: the database or the broker away, which a retry cures.
_OUTAGE_MODULES = ("ledger.store", "nats", "psycopg")


def is_outage(error: BaseException) -> bool:
    """Whether `error` says a dependency is away (the database, NATS, the network, a timeout),
    which the next round of a background loop may find back, rather than a bug it will meet again."""
    if isinstance(error, (OSError, TimeoutError)):
        return True
    import psycopg  # here, not at the top: the client package imports this module without the server extra

    if isinstance(error, psycopg.Error):
        return isinstance(error, psycopg.OperationalError)  # a DataError, a ProgrammingError: bugs
    return any(kind.__module__.startswith(_OUTAGE_MODULES) for kind in type(error).__mro__[:-2])


def round_failed(logger: logging.Logger, message: str, error: BaseException, *args) -> None:
    """A round of a background loop failed and will be tried again. An outage is INFO (expected,
    cured by retrying); anything else is ERROR with its traceback: a bug that retrying will not
    cure must not hide among the outages (a webhook recorder once died of a DataError unseen)."""
    if is_outage(error):
        logger.info(message + " (%s)", *args, error)
    else:
        logger.error(message + " (%s)", *args, error, exc_info=error)
