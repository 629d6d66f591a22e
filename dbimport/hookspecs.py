"""The hooks a dbimport plugin may implement (their markers are in `markers`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .markers import PROJECT_NAME, hookimpl, hookspec

if TYPE_CHECKING:
    from .events import TriggerEvent
    from .matcher import Matcher

__all__ = ["PROJECT_NAME", "dbimport_events_committed", "dbimport_register_matchers", "hookimpl", "hookspec"]


@hookspec
def dbimport_register_matchers() -> Sequence[Matcher]:
    """Return the matching modes this plugin provides, as `Matcher` instances.

    A `Matcher` instance is a plugin of its own (it implements this hook by
    returning itself): register it, or point an entry point at it, directly.

    Every mode name must be unique across all plugins: a duplicate stops the
    worker at start, naming both plugins.
    """
    raise NotImplementedError  # a specification: pluggy calls the plugins' implementations


@hookspec
def dbimport_events_committed(events: Sequence[TriggerEvent]) -> None:
    """Called once per committed batch with the trigger events it recorded.

    The events are already in the `events` table, in the same transaction as
    the profile writes; this is the notification. It runs after commit and
    before the results are published, so keep it short. An exception is
    logged and does not undo or retry anything. Messages with
    `skip_triggers` record no events and are not in `events`.
    """
