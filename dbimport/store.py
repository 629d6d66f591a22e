"""The PostgreSQL connection: opening it, its transactions, and its errors as types."""
from __future__ import annotations

import getpass
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg import pq
from psycopg.types.json import set_json_dumps, set_json_loads

from .config import redact_dsn
from .errors import (
    BadInput,
    DatabaseRefused,
    DatabaseUnavailable,
    DbimportError,
    ExitCode,
    WriteRace,
)

CONNECT_TIMEOUT_S = 5
# Statements over this are cancelled: a stuck lock must not hold a batch forever.
STATEMENT_TIMEOUT_MS = 120_000

SESSION_OPTIONS = " ".join(f"-c {setting}" for setting in (
    f"statement_timeout={STATEMENT_TIMEOUT_MS}",
    # A cached generic plan, chosen while a table was small, would be kept as it
    # grows (a scan per probe): plan every batch statement afresh.
    "plan_cache_mode=force_custom_plan",
    # The estimated cost of a batch's look-ups grows with the tables until JIT
    # compiles them: milliseconds of compiling for a statement that runs in one.
    "jit=off",
))

_RACES = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.UniqueViolation,
    psycopg.errors.LockNotAvailable,
)


# SQLSTATE classes of an outage: connection exception, insufficient resources,
# operator intervention (shutdown, cancel, statement timeout), system error.
_OUTAGE_CLASSES = ("08", "53", "57", "58")


# How dbimport_apply (migrations/0002_field_actions.sql) starts the text of an error
# that is the message's fault.
BAD_ACTION_PREFIX = "dbimport: "
# SQLSTATEs of a refusal: invalid authorization, no such database, insufficient privilege.
_REFUSAL_CLASSES = ("28",)
_NO_DATABASE = "3D000"
_INSUFFICIENT_PRIVILEGE = "42501"
# What libpq says when the server refuses a connection (no SQLSTATE reaches the client).
_NO_DATABASE_TEXT = re.compile(r'database "([^"]*)" does not exist')
_REFUSED_TEXTS = (
    "password authentication failed",
    "role \"",
    "no pg_hba.conf entry",
    "permission denied for database",
    "authentication failed",
    "no password supplied",
    "is not permitted to log in",
)


def translate(exc: BaseException, dsn: str = "") -> BaseException:
    """psycopg's exception as a dbimport type: refusal, outage, race, or itself (internal).

    An error with no SQLSTATE is the connection failing. Anything else (a
    program limit such as an index row too large, a bug) is internal: it must
    not be retried for ever as if the database were down.
    """
    if isinstance(exc, psycopg.Error):
        refused = refusal(exc, dsn)
        if refused is not None:
            return refused
        if isinstance(exc, psycopg.errors.NumericValueOutOfRange) and str(exc).startswith(BAD_ACTION_PREFIX):
            # A field action's result out of its type's range, found at commit.
            text = first_line(exc)[len(BAD_ACTION_PREFIX):]
            return BadInput(text, field=text.split(":", 1)[0])
    if isinstance(exc, _RACES):
        return WriteRace(f"{type(exc).__name__}: {exc}".strip())
    if isinstance(exc, psycopg.InterfaceError):
        return DatabaseUnavailable(f"{type(exc).__name__}: {first_line(exc)}")
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate
        if sqlstate is None or sqlstate.startswith(_OUTAGE_CLASSES):
            return DatabaseUnavailable(f"{type(exc).__name__}: {first_line(exc)}")
    return exc


def refusal(exc: psycopg.Error, dsn: str) -> DatabaseRefused | None:
    """The refusal `exc` reports (wrong user or password, no such database, no access), if any."""
    text = str(exc)
    sqlstate = exc.sqlstate or ""
    missing = _NO_DATABASE_TEXT.search(text)
    if sqlstate == _NO_DATABASE or missing:
        name = missing.group(1) if missing else database_name(dsn)
        return DatabaseRefused(
            f"PostgreSQL database {name!r} does not exist on {servers(dsn)}: run `dbimport-worker init-db` "
            "to create it, or fix POSTGRES_DSN",
            exit_code=ExitCode.CONFIG,
        )
    if sqlstate.startswith(_REFUSAL_CLASSES) or sqlstate == _INSUFFICIENT_PRIVILEGE or (
        not sqlstate and any(marker in text for marker in _REFUSED_TEXTS)
    ):
        return DatabaseRefused(
            f"PostgreSQL refused user {user_name(dsn)!r} on {describe_target(dsn)}: {server_message(exc)} "
            "(check the user and password in POSTGRES_DSN, the role's privileges, and pg_hba.conf)",
            exit_code=ExitCode.NOPERM,
        )
    return None


def server_message(exc: BaseException) -> str:
    """The server's reason, without libpq's "connection to server at ... failed:" prefix."""
    line = first_line(exc)
    for marker in ("FATAL:", "ERROR:"):
        if marker in line:
            line = line.rsplit(marker, 1)[1]
    return " ".join(line.split())


def describe_target(dsn: str) -> str:
    """`database 'NAME' at HOST:PORT[,HOST:PORT...]`, for one-line messages; never the password."""
    return f"database {database_name(dsn)!r} at {servers(dsn)}"


def servers(dsn: str) -> str:
    """`HOST:PORT[,HOST:PORT...]` of a DSN, one or several hosts."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the server POSTGRES_DSN names"
    hosts = str(params.get("host") or "localhost").split(",")
    ports = str(params.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return ",".join(f"{h}:{p}" for h, p in zip(hosts, ports))


def user_name(dsn: str) -> str:
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return ""
    return str(params.get("user") or os.environ.get("PGUSER") or getpass.getuser())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def with_database(dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **params)


def database_name(dsn: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return str(params.get("dbname") or params.get("user") or "")


class Store:
    """One connection to the profile store, reopened after it is lost."""

    def __init__(self, dsn: str, *, application_name: str = "dbimport-worker") -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None

    def __repr__(self) -> str:
        return f"Store({redact_dsn(self._dsn)!r})"

    def connect(self) -> psycopg.Connection[Any]:
        """The open connection, opened now if it is closed, broken, or not idle."""
        if self._conn is not None and _idle(self._conn):
            return self._conn
        self.close()
        try:
            self._conn = psycopg.connect(
                self._dsn,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=self._application_name,
                options=SESSION_OPTIONS,
                # Every unit of work is an explicit `transaction()` block.
                autocommit=True,
            )
        except psycopg.Error as exc:
            refused = refusal(exc, self._dsn)
            if refused is not None:
                raise refused from None
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL {describe_target(self._dsn)}: {server_message(exc)}"
            ) from None
        # orjson is several times faster than json for the jsonb columns of every write.
        set_json_dumps(orjson.dumps, context=self._conn)
        set_json_loads(orjson.loads, context=self._conn)
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction; psycopg's errors leave it as dbimport's types."""
        try:
            conn = self.connect()
            with conn.transaction():
                yield conn
        except DbimportError:
            raise
        except psycopg.Error as exc:
            translated = translate(exc, self._dsn)
            if isinstance(translated, DatabaseUnavailable):
                # Whatever state the failure left it in, the next attempt starts afresh.
                self.close()
            if translated is exc:
                raise
            raise translated from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None


def _idle(conn: psycopg.Connection[Any]) -> bool:
    """Whether `conn` can start a transaction: open, and not left inside a transaction or
    in pipeline mode by a failure (a connection terminated in the middle of a pipeline
    can stay in pipeline mode, busy, and refuse every query after)."""
    return (
        not conn.closed and not conn.broken
        and conn.info.transaction_status == pq.TransactionStatus.IDLE
        and conn.pgconn.pipeline_status == pq.PipelineStatus.OFF
    )
