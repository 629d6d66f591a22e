"""Trigger events: what a committed write records for the platform's triggers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILE_CREATED = "profile_created"
PROFILE_UPDATED = "profile_updated"
SUBSCRIBED = "subscribed"
SUBSCRIPTION_STATUS_CHANGED = "subscription_status_changed"


@dataclass(frozen=True)
class TriggerEvent:
    """One row of the `events` table, as plugins see it after commit.

    `payload` holds what changed: the fields written for a profile event;
    resource, channel, address and status for a subscription event.
    """

    db_id: int
    profile_id: str
    kind: str
    feedback_id: str
    payload: dict[str, Any] = field(default_factory=dict)
