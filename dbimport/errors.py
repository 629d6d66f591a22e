"""The error types: what stops the start, what becomes a result, what is retried."""
from __future__ import annotations


class DbimportError(Exception):
    """Base of every error dbimport raises on purpose."""


# --- stop at start -------------------------------------------------------------


class ConfigError(DbimportError):
    """A configuration value is missing or invalid; the worker exits 78."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class PluginError(DbimportError):
    """A matcher plugin is broken (duplicate mode, bad schema, unknown hook)."""


# --- bad input: answered with an error result, then acked ----------------------


class BadInput(DbimportError):
    """The message cannot be applied; `code` is the result's `error`.

    `field` names the key or data field at fault; it is part of `error_text`.
    """

    code = 400

    def __init__(self, text: str, *, field: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.field = field


class Forbidden(BadInput):
    """The database or resource is not the account's, or not linked."""

    code = 403


class NotFound(BadInput):
    """No such database, or no profile where one must exist."""

    code = 404


class Conflict(BadInput):
    """Ambiguous match, or the write would take another profile's unique value."""

    code = 409


class TooLarge(BadInput):
    """The body is over `IMPORT_MAX_MESSAGE_BYTES`."""

    code = 413


# --- transient: never a result, never an ack; retried --------------------------


class Transient(DbimportError):
    """A service failed for a reason that passes; the work is retried."""


class DatabaseUnavailable(Transient):
    """PostgreSQL is unreachable, restarted, or dropped our connection."""


class WriteRace(Transient):
    """A concurrent transaction won (serialization failure, deadlock, unique race).

    Retrying the whole transaction sees the winner's committed rows.
    """


class BrokerUnavailable(Transient):
    """RabbitMQ is unreachable or closed our connection or channel."""


class ResultUnroutable(BrokerUnavailable):
    """The broker returned a result as unroutable (the result queue is gone)."""
