"""The message log: each answered message's result, written with its effects.

At the start of a batch's transaction the worker locks a log row per message
(inserting a placeholder), so that two workers never apply one message at
once: a redelivered copy waits for the first worker's transaction, then finds
its result. A message whose row already held a result was applied before:

- a redelivered (or retried) message is then answered with the logged result
  and not applied again;
- a first delivery is too if this worker no longer holds it (its channel
  closed, so the broker gave a copy to another worker, which got there
  first); while the worker holds it, the row belongs to an identical message
  sent earlier, and the first delivery is applied.

See `pipeline.message_key` for what identifies a message.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg

from .results import Result


def lock(conn: psycopg.Connection[Any], db_id: int, keys: Sequence[bytes]) -> dict[bytes, Result]:
    """Lock the log rows of `keys`, in key order; the logged results of those that had one."""
    unique = sorted(set(keys))
    if not unique:
        return {}
    rows = conn.execute(
        "INSERT INTO message_log (db_id, message_key, result) "
        "SELECT %s, k, '' FROM unnest(%b::bytea[]) AS k ORDER BY k "
        "ON CONFLICT (db_id, message_key) DO UPDATE SET message_key = EXCLUDED.message_key "
        "RETURNING message_key, result",
        (db_id, unique),
    ).fetchall()
    # An empty result is our own placeholder: a new message.
    return {bytes(key): Result.from_json(bytes(raw)) for key, raw in rows if raw}


def applied_before(logged: Result | None, *, maybe_applied: bool, still_held: Callable[[], bool]) -> bool:
    """Whether a message with this logged result was applied already (see the module's text)."""
    if logged is None:
        return False
    return maybe_applied or not still_held()


def record(conn: psycopg.Connection[Any], db_id: int, entries: Iterable[tuple[bytes, Result]]) -> None:
    """Write each (key, result) in the caller's transaction: into the row `lock` made, or a new one."""
    # One row per key: identical messages in one batch share a key; the last one wins.
    latest = {key: result.to_json() for key, result in entries}
    if not latest:
        return
    conn.execute(
        "INSERT INTO message_log (db_id, message_key, result) "
        "SELECT %s, k, r FROM unnest(%b::bytea[], %b::bytea[]) AS t(k, r) "
        # Only `result` changes (`applied_at`, indexed, keeps the time the row was made):
        # with the table's free space per page, a HOT update, no new index entry.
        "ON CONFLICT (db_id, message_key) DO UPDATE SET result = EXCLUDED.result",
        (db_id, list(latest), list(latest.values())),
    )
