"""Logging for the command line: the job log file, stderr, and secrets masked."""
from __future__ import annotations

import logging
import logging.handlers
import sys

from .config import Settings, log_safe

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class RedactSecrets(logging.Filter):
    """Masks the configured passwords in every record, whoever logged it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = log_safe(message, self._settings)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = log_safe(record.exc_text, self._settings)
        if safe != message or record.args:
            record.msg, record.args = safe, None
        return True


def configure(settings: Settings, *, stderr: bool = True) -> None:
    """Log to JOB_SERVER_LOG (reopened when logrotate moves it) and to stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT)
    redact = RedactSecrets(settings)
    # WatchedFileHandler reopens the file when its inode changes (logrotate's move).
    handlers: list[logging.Handler] = [logging.handlers.WatchedFileHandler(settings.log_path, encoding="utf-8")]
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redact)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # pika logs every connection hiccup at ERROR with a traceback, and returned
    # messages with their bodies; the worker's own lines say it once, without data.
    logging.getLogger("pika").setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.CRITICAL)
