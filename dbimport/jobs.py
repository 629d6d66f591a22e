"""A job: one valid message, matched and checked, on its way to the store."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from .catalog import Database
from .matcher import Matcher, Query
from .message import Envelope
from .ordering import Effects, effects
from .profile_data import ProfileWrite


@dataclass
class Job:
    """One valid message on its way to the store."""

    index: int
    envelope: Envelope
    db: Database
    matcher: Matcher
    query: Query
    write: ProfileWrite
    message_key: bytes
    # Redelivered, or retried after an unknown commit outcome: maybe applied.
    maybe_applied: bool = False
    # Whether the worker still holds the delivery (its channel is open).
    still_held: Callable[[], bool] = lambda: True

    @property
    def feedback_id(self) -> str:
        return self.envelope.feedback_id

    @property
    def may_create(self) -> bool:
        return self.matcher.creates and not self.envelope.update_only

    @cached_property
    def effects(self) -> Effects:
        return effects(self.query, self.write)
