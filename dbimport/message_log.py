"""The message log: each answered message's result, written with its effects.

A batch reads the log rows of its messages that may have been applied
already: redelivered ones, and all of them when an attempt is retried after
an unknown commit outcome. Such a message whose row holds a result is answered
with it and not applied again.

A first delivery is applied without a read. Its row is written at the end of
the batch's transaction, one insert a message (one statement for the batch),
and the unique key decides, not a read. If the row exists already:

- while the worker still holds the delivery, the row belongs to an identical
  message sent earlier (the broker gave this copy to no one else): the row is
  overwritten with this answer;
- once the worker no longer holds it (its channel closed, so the broker gave a
  copy to another worker, which committed first), the write fails as a race
  (`WriteRace`): the transaction rolls back with everything it wrote, and the
  retry, reading the log, answers the message from it.

See `pipeline.message_key` for what identifies a message.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg

from .errors import WriteRace
from .results import Result


def logged(conn: psycopg.Connection[Any], db_id: int, keys: Sequence[bytes]) -> dict[bytes, Result]:
    """The logged results of those of `keys` that have one."""
    unique = sorted(set(keys))
    if not unique:
        return {}
    rows = conn.execute(
        "SELECT message_key, result FROM message_log WHERE db_id = %s AND message_key = ANY(%b::bytea[])",
        (db_id, unique),
    ).fetchall()
    return {bytes(key): Result.from_json(bytes(raw)) for key, raw in rows}


def record(
    conn: psycopg.Connection[Any], db_id: int, entries: Iterable[tuple[bytes, Result]],
    *, overwrite: Callable[[bytes], bool] = lambda key: False,
) -> None:
    """Write each (key, result) in the caller's transaction: inserted, and where the key's
    row exists already (committed by another transaction, or by an earlier one)
    overwritten if `overwrite(key)`, else WriteRace is raised."""
    # One row per key: identical messages in one batch share a key; the last one wins.
    latest = {key: result.to_json() for key, result in entries}
    if not latest:
        return
    inserted = {bytes(key) for (key,) in conn.execute(
        "INSERT INTO message_log (db_id, message_key, result) "
        "SELECT %s, k, r FROM unnest(%b::bytea[], %b::bytea[]) AS t(k, r) "
        "ON CONFLICT (db_id, message_key) DO NOTHING RETURNING message_key",
        (db_id, list(latest), list(latest.values())),
    ).fetchall()}
    overwritten = [key for key in latest if key not in inserted]
    raced = [key for key in overwritten if not overwrite(key)]
    if raced:
        raise WriteRace(f"{len(raced)} message(s) of the batch were applied by another worker meanwhile")
    if overwritten:
        keys = sorted(overwritten)
        conn.execute(
            "UPDATE message_log AS m SET result = t.r FROM unnest(%b::bytea[], %b::bytea[]) AS t(k, r) "
            "WHERE m.db_id = %s AND m.message_key = t.k",
            (keys, [latest[k] for k in keys], db_id),
        )
