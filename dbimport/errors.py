"""The error types and exit codes: what stops the start, what becomes a result, what is retried."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The exit codes of `dbimport-worker` and `dbimport-load` (sysexits.h where one fits).

    docs/operations.md has the troubleshooting table: each code, each message, its fix.
    """

    OK = 0  # done; also: another run holds --lock-file
    PROBLEMS = 1  # `check` found problems; `dbimport-load`: some row failed
    USAGE = 2  # a bad command line (argparse's own code)
    UNAVAILABLE = 69  # a service stayed unreachable for IMPORT_CONNECT_TIMEOUT_S at start
    SOFTWARE = 70  # an internal error (a bug): the traceback is in the log
    CANTCREAT = 73  # a file it must write (the log, the lock file, a report) cannot be created
    NOPERM = 77  # a service refuses us: wrong user or password, no access to the vhost or database
    CONFIG = 78  # bad configuration: a bad value, no such vhost or database, schema not initialised


class DbimportError(Exception):
    """Base of every error dbimport raises on purpose."""


# --- stop at start -------------------------------------------------------------


class Fatal(DbimportError):
    """A failure at start that the operator fixes: one line, and an exit code.

    `text` names the cause and the fix; it is all the operator reads.
    """

    exit_code: ExitCode = ExitCode.CONFIG

    def __init__(self, text: str, *, exit_code: ExitCode | None = None) -> None:
        super().__init__(text)
        self.text = text
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(Fatal):
    """A configuration value is missing or invalid; exit 78."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}", exit_code=ExitCode.CONFIG)
        self.key = key
        self.reason = reason


class PluginError(Fatal):
    """A matcher plugin is broken (duplicate mode, bad schema, unknown hook); exit 78."""


class CannotCreate(Fatal):
    """A file the worker must write (log, lock) or a port it must listen on cannot be had."""

    exit_code = ExitCode.CANTCREAT


class ServiceUnavailable(Fatal):
    """A service stayed unreachable for the whole IMPORT_CONNECT_TIMEOUT_S at start; exit 69."""

    exit_code = ExitCode.UNAVAILABLE


class Refused(Fatal):
    """A service answers but will not serve us, and waiting does not change that:
    wrong user or password, no access (77), no such vhost or database (78).

    At start it stops the worker at once. While running (credentials rotated
    under a live worker) it is retried like an outage, and logged as an error.
    """

    exit_code = ExitCode.NOPERM


class BrokerRefused(Refused):
    """RabbitMQ refused the connection or an operation on a queue."""


class DatabaseRefused(Refused):
    """PostgreSQL refused the connection, or the database does not exist."""


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
