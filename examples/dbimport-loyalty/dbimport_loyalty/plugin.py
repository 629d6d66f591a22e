"""The plugin module dbimport loads through the `dbimport` entry-point group."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from dbimport.api import PROFILE_CREATED, Matcher, TriggerEvent, hookimpl

from .matcher import CARD_FIELD, LoyaltyMatcher

log = logging.getLogger(__name__)

#: new members seen by this process, by database id
members_joined: Counter[int] = Counter()


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [LoyaltyMatcher()]


@hookimpl
def dbimport_events_committed(events: Sequence[TriggerEvent]) -> None:
    """Count the profiles created with a loyalty card: the program's new members."""
    joined = Counter(
        event.db_id
        for event in events
        if event.kind == PROFILE_CREATED and CARD_FIELD in event.payload.get("fields", {})
    )
    for db_id, count in sorted(joined.items()):
        log.info("dbimport-loyalty: %d new member(s) in database %d", count, db_id)
    members_joined.update(joined)
