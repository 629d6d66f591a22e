"""`check`: every precondition of a healthy worker, each problem on its own line."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .broker import open_connection
from .broker import problems as queue_problems
from .config import Settings
from .errors import ExitCode, Refused, ServiceUnavailable
from .metrics import port_free
from .migrations import current_version, installed_version, missing_unique_keys
from .retry import reach
from .store import Store


@dataclass
class Report:
    """The problems found, and the exit code: the one `run` would stop with, else 1 if any."""

    problems: list[str] = field(default_factory=list)
    exit_code: ExitCode = ExitCode.OK

    def add(self, problem: str, code: ExitCode = ExitCode.PROBLEMS) -> None:
        self.problems.append(problem)
        if self.exit_code in (ExitCode.OK, ExitCode.PROBLEMS):
            self.exit_code = code


def run_checks(settings: Settings, *, lock_file: str | None = None, metrics_port: int | None = None) -> Report:
    report = Report()
    for check in (check_database, check_queues):
        try:
            for problem in check(settings):
                report.add(problem)
        except (Refused, ServiceUnavailable) as exc:
            report.add(exc.text, exc.exit_code)
    for problem in host_problems(settings, lock_file=lock_file, metrics_port=metrics_port):
        report.add(problem)
    return report


def check_database(settings: Settings) -> list[str]:
    store = Store(settings.postgres_dsn, application_name="dbimport-check")
    try:
        reach("PostgreSQL", store.connect, timeout_s=settings.connect_timeout_s)
        with store.transaction() as conn:
            version = installed_version(conn)
            if version != current_version():
                return [
                    f"schema: at version {version}, expected {current_version()}: "
                    "run `dbimport-worker init-db`"
                ]
            return [f"schema: missing unique key on {key}" for key in missing_unique_keys(conn)]
    finally:
        store.close()


def check_queues(settings: Settings) -> list[str]:
    """A missing queue, or one whose arguments differ from the configuration."""
    connection, _ = reach(
        "RabbitMQ", lambda: open_connection(settings, name="dbimport-check"), timeout_s=settings.connect_timeout_s
    )
    try:
        return queue_problems(connection, settings)
    finally:
        if connection.is_open:
            connection.close()


def host_problems(settings: Settings, *, lock_file: str | None, metrics_port: int | None) -> list[str]:
    """What `run` needs of this machine: a writable log, a lock file it can create, a free port."""
    found = []
    log_problem = writable(settings.log_path)
    if log_problem:
        found.append(f"job log {settings.log_path!r}: {log_problem} (set JOB_SERVER_LOG to a writable path)")
    if lock_file is not None:
        lock_problem = writable(lock_file)
        if lock_problem:
            found.append(f"lock file {lock_file!r}: {lock_problem} (create the directory or change --lock-file)")
    if metrics_port is not None:
        port_problem = port_free(metrics_port)
        if port_problem:
            found.append(port_problem)
    return found


def writable(path: str) -> str | None:
    """None if `path` can be opened for appending (without creating it now), else why not."""
    file = Path(path)
    if file.exists():
        return None if os.access(file, os.W_OK) and not file.is_dir() else "not a writable file"
    folder = file.parent
    if not folder.is_dir():
        return f"its directory {str(folder)!r} does not exist"
    return None if os.access(folder, os.W_OK | os.X_OK) else f"its directory {str(folder)!r} is not writable"

