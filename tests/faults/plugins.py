"""Test plugins that make the worker fail on purpose, configured by environment variables.

- FAULT_CRASH_AFTER_COMMIT=MARKER: after the FAULT_CRASH_AT_BATCH-th committed batch
  (default 1), write the feedback_ids of its events to MARKER and `os._exit(137)`:
  committed, results not published, nothing acked. Only while MARKER does not exist.
- FAULT_CRASH_BEFORE_ACK=MARKER: at the FAULT_CRASH_AT_BATCH-th ack, after the results
  were published, write the feedback_ids of those results to MARKER and exit the same way.

The `fault_email` mode (e-mail matching, registered always) takes, inside the batch's
transaction:
- FAULT_POISON_EMAILS=a@x,b@x: an internal error whenever it looks one of these
  addresses up. Unset, the plugin is "fixed".
- FAULT_PACE_S=S: S seconds per look-up, so that a fault lands mid-stream and
  mid-transaction even on a fast machine. FAULT_PACE_FILE=F: the number of seconds is
  read from F at each look-up instead (none while F is missing), so that a test can
  slow the stream down while it injects faults and let it finish at full speed.
- FAULT_HOLD_EMAIL=a@x, FAULT_HOLD_MARKER=M, FAULT_HOLD_RELEASE=R: on looking that address
  up (once per process), create M, then wait until R exists.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dbimport.api import EMAIL, Found, IdentityMatcher, Lookup, Matcher, Query, TriggerEvent, hookimpl
from dbimport.broker import Broker, Outgoing

CRASH_EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL
FAULT_MODE = "fault_email"


def crash(marker: Path, feedback_ids: Sequence[str]) -> None:
    """Leave a note of what was in hand, then die at once: no cleanup, no flush of pika."""
    marker.write_bytes(orjson.dumps(list(feedback_ids)))
    os._exit(CRASH_EXIT_CODE)


class CrashAfterCommit:
    """Dies in `dbimport_events_committed` of the n-th batch: committed, not answered."""

    def __init__(self, marker: Path, at_batch: int) -> None:
        self.marker = marker
        self.at_batch = at_batch
        self.batches = 0

    @hookimpl
    def dbimport_events_committed(self, events: Sequence[TriggerEvent]) -> None:
        self.batches += 1
        if self.batches == self.at_batch and not self.marker.exists():
            crash(self.marker, sorted({e.feedback_id for e in events}))


def crash_before_ack(marker: Path, at_batch: int) -> None:
    """Patch the broker so that the n-th ack never happens: results published, then death."""
    published: list[bytes] = []
    acks = 0
    original_publish = Broker.publish
    original_ack = Broker.ack_through

    def publish(self: Broker, messages: Sequence[Outgoing]) -> None:
        original_publish(self, messages)
        published[:] = [m.body for m in messages]

    def ack_through(self: Broker, tag: int) -> None:
        nonlocal acks
        acks += 1
        if acks == at_batch and not marker.exists():
            crash(marker, [orjson.loads(body)["feedback_id"] for body in published])
        original_ack(self, tag)

    Broker.publish = publish  # type: ignore[method-assign]
    Broker.ack_through = ack_through  # type: ignore[method-assign]


class FaultEmailMatcher(IdentityMatcher):
    """E-mail matching that fails, stalls or dawdles on demand, inside the batch's
    transaction, as a plugin with a bug or a slow look-up would."""

    def __init__(self, *, poisoned: frozenset[str], pace: Pace, hold: Hold | None) -> None:
        super().__init__(name=FAULT_MODE, identity=EMAIL,
                         description="e-mail matching with injected faults (tests only)")
        self.poisoned = poisoned
        self.pace = pace
        self.hold = hold

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        emails = {q.values["email"] for q in queries}
        bad = sorted(emails & self.poisoned)
        if bad:
            raise RuntimeError(f"{FAULT_MODE} cannot look up {', '.join(bad)}")
        if self.hold is not None and self.hold.email in emails:
            hold, self.hold = self.hold, None
            hold.wait()
        self.pace.wait()
        return super().find_many(lookup, queries)


@dataclass
class Pace:
    """A pause per look-up: fixed, or read from a file the test may rewrite."""

    seconds: float = 0.0
    path: Path | None = None

    def wait(self) -> None:
        seconds = self.seconds
        if self.path is not None:
            try:
                seconds = float(self.path.read_text() or 0)
            except (OSError, ValueError):
                seconds = 0.0
        if seconds > 0:
            time.sleep(seconds)


@dataclass
class Hold:
    """Stop in the middle of a transaction: say so in `marker`, wait for `release` to exist."""

    email: str
    marker: Path
    release: Path
    max_s: float = 120.0

    def wait(self) -> None:
        self.marker.touch()
        deadline = time.monotonic() + self.max_s
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


class FaultMatcherPlugin:
    def __init__(self, matcher: FaultEmailMatcher) -> None:
        self.matcher = matcher

    @hookimpl
    def dbimport_register_matchers(self) -> list[Matcher]:
        return [self.matcher]


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def from_environment(env: Mapping[str, str]) -> list[Any]:
    """The plugins (and patches) the environment asks for; the fault_email mode always."""
    at_batch = int(env.get("FAULT_CRASH_AT_BATCH", "1"))
    poisoned = frozenset(e.strip().lower() for e in env.get("FAULT_POISON_EMAILS", "").split(",") if e.strip())
    hold = None
    if env.get("FAULT_HOLD_EMAIL"):
        hold = Hold(env["FAULT_HOLD_EMAIL"], Path(env["FAULT_HOLD_MARKER"]), Path(env["FAULT_HOLD_RELEASE"]))
    plugins: list[Any] = [FaultMatcherPlugin(FaultEmailMatcher(
        poisoned=poisoned, hold=hold,
        pace=Pace(float(env.get("FAULT_PACE_S", "0")), _path(env.get("FAULT_PACE_FILE"))),
    ))]
    if env.get("FAULT_CRASH_AFTER_COMMIT"):
        plugins.append(CrashAfterCommit(Path(env["FAULT_CRASH_AFTER_COMMIT"]), at_batch))
    if env.get("FAULT_CRASH_BEFORE_ACK"):
        crash_before_ack(Path(env["FAULT_CRASH_BEFORE_ACK"]), at_batch)
    return plugins
