"""Housekeeping: pruning the bookkeeping tables that would otherwise grow for ever."""
from __future__ import annotations

import logging
from typing import Any

from .store import Store

log = logging.getLogger(__name__)

# One worker prunes at a time; the others skip (any constant unique to dbimport).
PRUNE_LOCK_ID = 0x64_62_69_70_72  # "dbipr"
CHUNK_ROWS = 10_000
# table -> its timestamp column
PRUNED_TABLES = {
    "message_log": "applied_at",
    "delivery_failures": "updated_at",
    "match_claims": "claimed_at",
}


def prune(store: Store, *, retention_s: int) -> dict[str, int]:
    """Delete rows older than `retention_s`, in chunks; {table: rows deleted}.

    A redelivery later than the retention would be applied again, so keep it
    far longer than any outage (the default is a week). Claim rows are only
    locks: a deleted one is recreated by the next claim.
    """
    deleted = dict.fromkeys(PRUNED_TABLES, 0)
    with store.transaction() as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (PRUNE_LOCK_ID,)).fetchone()
    if not got or not got[0]:
        return deleted
    try:
        for table, column in PRUNED_TABLES.items():
            while True:
                with store.transaction() as conn:
                    n = _delete_chunk(conn, table, column, retention_s)
                deleted[table] += n
                if n < CHUNK_ROWS:
                    break
    finally:
        with store.transaction() as conn:
            conn.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK_ID,))
    if any(deleted.values()):
        log.info("pruned %s", ", ".join(f"{t}: {n}" for t, n in deleted.items()))
    return deleted


def _delete_chunk(conn: Any, table: str, column: str, retention_s: int) -> int:
    # Identifiers come from PRUNED_TABLES above, never from input.
    query = (
        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM {table} WHERE {column} < now() - make_interval(secs => %s) LIMIT %s))"
    )
    return int(conn.execute(query.encode(), (retention_s, CHUNK_ROWS)).rowcount)
