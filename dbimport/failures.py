"""Internal failures per message, counted across redeliveries, crashes and workers."""
from __future__ import annotations

from typing import Any

import psycopg

MAX_REASON_CHARS = 2000


def count(conn: psycopg.Connection[Any], db_id: int, key: bytes, reason: str) -> int:
    """Add one failure to the message's count; the count so far."""
    row = conn.execute(
        "INSERT INTO delivery_failures (db_id, message_key, failures, last_error) "
        "VALUES (%s, %s, 1, %s) ON CONFLICT (db_id, message_key) DO UPDATE "
        "SET failures = delivery_failures.failures + 1, last_error = EXCLUDED.last_error, "
        "updated_at = now() RETURNING failures",
        (db_id, key, reason[:MAX_REASON_CHARS]),
    ).fetchone()
    return int(row[0]) if row else 1


def forget(conn: psycopg.Connection[Any], db_id: int, key: bytes) -> None:
    """Reset the message's count, and its logged answer, so a replay starts afresh."""
    conn.execute("DELETE FROM delivery_failures WHERE db_id = %s AND message_key = %s", (db_id, key))
    conn.execute("DELETE FROM message_log WHERE db_id = %s AND message_key = %s", (db_id, key))
