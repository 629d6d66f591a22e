"""Logging for the command line: the job log file and stderr.

Secrets are kept out by never formatting them (Settings renders its secrets
masked, DSNs are rendered with `redact_dsn`), not by rewriting log lines:
a profile field that happens to hold the password's text is logged as it is.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Iterable

from .config import (
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_PATH,
    Settings,
    keys,
    read_config_file,
)
from .errors import CannotCreate, DbimportError

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def open_log(path: str) -> logging.Handler:
    """The job log's handler; CannotCreate naming the path and the fix if it cannot be opened."""
    try:
        # WatchedFileHandler reopens the file when its inode changes (logrotate's move).
        return logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise CannotCreate(
            f"cannot open the job log {path!r} for writing: {exc.strerror or exc} "
            "(set JOB_SERVER_LOG to a writable path, or fix the directory's permissions)"
        ) from None


def configure(settings: Settings, *, stderr: bool = True) -> None:
    """Log to JOB_SERVER_LOG (reopened when logrotate moves it) and to stderr."""
    file_handler = open_log(settings.log_path)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)
    if stderr:
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setFormatter(WithoutTraceback(FORMAT))
        root.addHandler(terminal)
    root.setLevel(settings.log_level)
    # pika logs every connection hiccup at ERROR with a traceback, and returned
    # messages with their bodies; the worker's own lines say it once, without data.
    logging.getLogger("pika").setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.CRITICAL)


class WithoutTraceback(logging.Formatter):
    """The terminal's format: the line, without the traceback (that goes to the log)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def warn_all(warnings: Iterable[str]) -> None:
    for warning in warnings:
        logging.getLogger("dbimport.config").warning("%s", warning)


def fatal(prog: str, text: str, settings: Settings | None, *, config_path: str | None = None) -> None:
    """A failure at start: one line on stderr, and the same line in the job log if it can be opened."""
    if _configured():
        logging.getLogger("dbimport.cli").error("%s", text)
        return
    print(f"{prog}: {text}", file=sys.stderr)
    _append(text, _log_path(settings, config_path), level="ERROR")


def internal_error(prog: str, exc: BaseException, settings: Settings | None, *, config_path: str | None = None) -> None:
    """A bug: its traceback goes to the job log; the terminal gets one line saying where."""
    path = _log_path(settings, config_path)
    text = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
    if _configured():
        logging.getLogger("dbimport.cli").error("%s (the traceback is in %s)", text, path, exc_info=exc)
        return
    written = _append(text, path, level="CRITICAL", traceback=exc)
    where = f"the traceback is in {path}" if written else "the job log could not be opened for the traceback"
    print(f"{prog}: {text} ({where})", file=sys.stderr)


def _configured() -> bool:
    return any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers)


def _log_path(settings: Settings | None, config_path: str | None) -> str:
    """The job log's path: from the settings, else as much of the configuration as can be read."""
    if settings is not None:
        return settings.log_path
    path = os.environ.get("JOB_SERVER_LOG")
    if path:
        return path
    try:
        raw = read_config_file(config_path or os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)
    except DbimportError:
        raw = {}
    value = raw.get("JOB_SERVER_LOG")
    return value if isinstance(value, str) and value.strip() else str(keys()["JOB_SERVER_LOG"].default)


def _append(text: str, path: str, *, level: str, traceback: BaseException | None = None) -> bool:
    """Append one record to the log at `path` in the log's format; False if it cannot be opened."""
    record = logging.LogRecord("dbimport.cli", getattr(logging, level), __file__, 0, "%s", (text,),
                               (type(traceback), traceback, traceback.__traceback__) if traceback else None)
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(logging.Formatter(FORMAT).format(record) + "\n")
    except OSError:
        return False
    return True
