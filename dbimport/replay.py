"""Replaying dead letters: back to the import queue, their failure counts reset."""
from __future__ import annotations

import logging

from . import failures
from .broker import Delivery, move_dead_letters
from .config import Settings
from .pipeline import db_id_of, message_key
from .store import Store

log = logging.getLogger(__name__)


def replay_dead(settings: Settings, *, max_messages: int | None = None) -> int:
    """Move up to `max_messages` dead letters (all by default) back; how many moved.

    Each message's failure count and logged 500 are deleted first, so the
    replayed copy is handled afresh and gets its full IMPORT_MAX_DELIVERIES.
    """
    store = Store(settings.postgres_dsn, application_name="dbimport-replay")

    def reset(delivery: Delivery) -> None:
        with store.transaction() as conn:
            failures.forget(conn, db_id_of(delivery.body), message_key(delivery))

    try:
        moved = move_dead_letters(settings, before_publish=reset, max_messages=max_messages)
    finally:
        store.close()
    log.info("replayed %d dead letter(s) from %s to %s", moved, settings.dead_queue, settings.import_queue)
    return moved
