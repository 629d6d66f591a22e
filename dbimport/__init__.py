"""dbimport: import customer profiles into PostgreSQL from a RabbitMQ queue."""
from __future__ import annotations

from .hookspecs import hookimpl
from .matcher import Found, Key, Matcher, Query

__all__ = ["Found", "Key", "Matcher", "Query", "hookimpl"]
