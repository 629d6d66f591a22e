"""Trigger events: recorded with the write, skipped on request, told to plugins, never twice.

docs/contract.md, "Trigger events".

Plugins are told through the `dbimport_events_committed` hook (docs/writing-a-matcher.md,
"The hooks"); a redelivered message is answered from the message log without a
second event (docs/contract.md, "Redelivery and idempotency").
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from conftest import Harness, msg, ok, worker_env
from dbimport import writer
from dbimport.broker import Delivery
from dbimport.config import Settings
from dbimport.events import TriggerEvent
from dbimport.hookspecs import hookimpl
from dbimport.plugins import get_plugin_manager
from dbimport.worker import RunLimits, Worker

EVENT_ROWS = "SELECT kind, profile_id, feedback_id, payload FROM events ORDER BY event_id"


def event_keys(harness: Harness) -> list[tuple[str, str, str]]:
    return [(kind, pid, fb) for kind, pid, fb, _payload in harness.rows(EVENT_ROWS)]


class Listener:
    """A plugin that keeps what `dbimport_events_committed` tells it, and what another
    connection could see in `events` at that moment (committed rows only)."""

    def __init__(self, dsn: str, *, fail: bool = False) -> None:
        self.dsn = dsn
        self.fail = fail
        self.calls: list[list[TriggerEvent]] = []
        self.visible_then: list[Counter[tuple[str, str, str]]] = []

    @hookimpl
    def dbimport_events_committed(self, events: Sequence[TriggerEvent]) -> None:
        self.calls.append(list(events))
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute("SELECT kind, profile_id, feedback_id FROM events").fetchall()
        self.visible_then.append(Counter(rows))
        if self.fail:
            raise RuntimeError("a trigger plugin failed")

    def told(self) -> list[tuple[str, str, str]]:
        return [(e.kind, e.profile_id, e.feedback_id) for call in self.calls for e in call]


def run_with(settings: Settings, *plugins: Any) -> None:
    Worker(settings, plugin_manager=get_plugin_manager(extra_plugins=plugins)).run(RunLimits(until_empty=True))


# --- recorded, in the write's transaction ------------------------------------------------

EMAIL_SUB = {"resource_id": 24, "channel": "email", "email": "ann@example.com"}
ADDRESS = {"resource_id": 24, "channel": "email", "provider": "", "address": "ann@example.com"}


def test_creates_updates_and_subscription_changes_record_their_events(harness: Harness) -> None:
    """Each committed create, update, new subscription and status change records an
    event naming the profile and the message's feedback_id, with what changed."""
    results = ok(harness.import_(
        msg(email="ann@example.com", feedback_id="create", data={"_fname": "Ann", "subscriptions": [EMAIL_SUB]}),
        msg(email="ann@example.com", feedback_id="unsubscribe",
            data={"_lname": "Lee", "subscriptions": [{**EMAIL_SUB, "status": "unsubscribed"}]}),
        msg(email="ann@example.com", feedback_id="same status",
            data={"subscriptions": [{**EMAIL_SUB, "status": "unsubscribed", "priority": 2}]}),
        msg(email="ann@example.com", feedback_id="resubscribe",
            data={"subscriptions": [{**EMAIL_SUB, "status": "subscribed"}]}),
    ))
    pid = results[0]["profile_id"]
    rows = harness.rows(EVENT_ROWS)
    assert [(kind, p, fb) for kind, p, fb, _ in rows] == [
        ("profile_created", pid, "create"),
        ("subscribed", pid, "create"),
        ("profile_updated", pid, "unsubscribe"),
        ("subscription_status_changed", pid, "unsubscribe"),
        ("profile_updated", pid, "same status"),
        ("profile_updated", pid, "resubscribe"),
        ("subscription_status_changed", pid, "resubscribe"),
    ]
    payloads = [payload for *_, payload in rows]
    assert payloads[0]["fields"] == {"email": "ann@example.com", "_fname": "Ann"}
    assert payloads[1] == {**ADDRESS, "status": "subscribed"}
    assert payloads[2]["fields"] == {"_lname": "Lee"}
    assert payloads[3] == {**ADDRESS, "from": "subscribed", "to": "unsubscribed"}
    assert payloads[6] == {**ADDRESS, "from": "unsubscribed", "to": "subscribed"}


def test_skip_triggers_records_no_event_but_writes(harness: Harness) -> None:
    """skip_triggers: the profile and its subscriptions are written, no event is
    recorded and no plugin is told; a message without it in the same batch records its own."""
    listener = Listener(harness.settings.postgres_dsn)
    harness.publish(
        msg(email="ann@example.com", skip_triggers=True, data={"_fname": "Ann", "subscriptions": [EMAIL_SUB]}),
        msg(email="ann@example.com", skip_triggers=True,
            data={"_lname": "Lee", "subscriptions": [{**EMAIL_SUB, "status": "unsubscribed"}]}),
        msg(email="bob@example.com", feedback_id="bob", data={"_fname": "Bob"}),
    )
    run_with(harness.settings, listener)
    ann, _, bob = ok(harness.results())
    assert harness.rows("SELECT fields FROM profiles WHERE profile_id = %s", ann["profile_id"]) == [
        ({"_fname": "Ann", "_lname": "Lee"},)
    ]
    assert harness.rows("SELECT status FROM subscriptions") == [("unsubscribed",)]
    assert event_keys(harness) == [("profile_created", bob["profile_id"], "bob")]
    assert listener.told() == [("profile_created", bob["profile_id"], "bob")]


def test_an_event_is_never_committed_without_its_write(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the batch transaction fails after the profile, subscription and event rows
    are staged (writing the message log), then none of them is committed: the event
    lives and dies with its write. The message is answered 500 and no plugin is told."""

    def message_log_fails(*args: Any) -> None:
        raise RuntimeError("message log unavailable")

    monkeypatch.setattr(writer, "record", message_log_fails)
    listener = Listener(harness.settings.postgres_dsn)
    harness.publish(msg(email="ann@example.com", data={"subscriptions": [EMAIL_SUB]}))
    run_with(harness.settings.replace(max_deliveries=1), listener)

    assert [r["error"] for r in harness.results()] == [500]
    assert harness.count("SELECT count(*) FROM profiles") == 0
    assert harness.count("SELECT count(*) FROM subscriptions") == 0
    assert harness.count("SELECT count(*) FROM events") == 0
    assert listener.calls == []


# --- told to plugins after commit ----------------------------------------------------------


def test_plugins_are_told_of_the_events_after_commit(harness: Harness) -> None:
    """A plugin's dbimport_events_committed hook gets exactly the recorded events, and
    when it runs they are already committed (another connection sees them)."""
    listener = Listener(harness.settings.postgres_dsn)
    harness.publish(
        msg(email="ann@example.com", feedback_id="a1", data={"subscriptions": [EMAIL_SUB]}),
        msg(email="bob@example.com", feedback_id="b1", skip_triggers=True),
    )
    run_with(harness.settings, listener)
    harness.publish(msg(email="ann@example.com", feedback_id="a2", data={"_fname": "Ann"}))
    run_with(harness.settings, listener)

    ok(harness.results())
    recorded = event_keys(harness)
    assert [kind for kind, _, _ in recorded] == ["profile_created", "subscribed", "profile_updated"]
    assert listener.told() == recorded
    assert len(listener.calls) == 2
    for call, visible in zip(listener.calls, listener.visible_then):
        assert Counter((e.kind, e.profile_id, e.feedback_id) for e in call) - visible == Counter()
    assert [e.payload for e in listener.calls[0]] == [payload for *_, payload in harness.rows(EVENT_ROWS)][:2]


def test_a_failing_plugin_does_not_undo_or_fail_the_import(harness: Harness) -> None:
    listener = Listener(harness.settings.postgres_dsn, fail=True)
    harness.publish(msg(email="ann@example.com", data={"_fname": "Ann"}))
    run_with(harness.settings, listener)
    [r] = ok(harness.results())
    assert event_keys(harness) == [("profile_created", r["profile_id"], "")]
    assert listener.told() == [("profile_created", r["profile_id"], "")]
    assert harness.queue_depth(harness.settings.import_queue) == 0


# --- redelivery: no second event, the same result ------------------------------------------


def test_a_redelivered_message_already_applied_records_no_second_event_and_gets_the_same_result(
    harness: Harness,
) -> None:
    """Given messages applied and answered, and a later message changing the profile,
    when the broker redelivers the first ones (their ack lost), then each is answered
    from the message log with the very same result, records no event, tells no
    plugin, and does not write again (the later change stays). A redelivered message
    that was never applied is applied as usual."""
    create = orjson.dumps(msg(email="ann@example.com", feedback_id="create",
                              data={"_fname": "Ann", "subscriptions": [EMAIL_SUB]}))
    update = orjson.dumps(msg(email="ann@example.com", feedback_id="update",
                              data={"subscriptions": [{**EMAIL_SUB, "status": "unsubscribed"}]}))
    later = orjson.dumps(msg(email="ann@example.com", feedback_id="later",
                             data={"_fname": "Later", "subscriptions": [{**EMAIL_SUB, "status": "suspended"}]}))
    harness.publish(create, update, later)
    harness.run()
    first = {r["feedback_id"]: r for r in ok(harness.results())}
    events_before = harness.rows(EVENT_ROWS)

    listener = Listener(harness.settings.postgres_dsn)
    worker = Worker(harness.settings, plugin_manager=get_plugin_manager(extra_plugins=[listener]))
    try:
        worker.catalog.reload()
        never_applied = orjson.dumps(msg(email="bob@example.com", feedback_id="never applied"))
        deliveries = [Delivery(tag=1, body=create, redelivered=True), Delivery(tag=2, body=update, redelivered=True),
                      Delivery(tag=3, body=never_applied, redelivered=True)]
        batch = worker.pipeline.apply(deliveries, worker.pipeline.prepare_all(deliveries), sleep=lambda s: None)
        worker.pipeline.notify(batch.events)
    finally:
        worker.store.close()

    replayed, replayed_update, fresh = batch.outcomes
    assert (replayed.replayed, replayed_update.replayed, fresh.replayed) == (True, True, False)
    assert orjson.loads(replayed.result.to_json()) == first["create"]
    assert orjson.loads(replayed_update.result.to_json()) == first["update"]
    assert fresh.result is not None and fresh.result.error == 0
    assert harness.rows(EVENT_ROWS) == [*events_before, ("profile_created", fresh.result.profile_id, "never applied",
                                                        {"fields": {"email": "bob@example.com"}})]
    assert listener.told() == [("profile_created", fresh.result.profile_id, "never applied")]
    assert harness.rows("SELECT fields->>'_fname' FROM profiles WHERE email = 'ann@example.com'") == [("Later",)]
    assert harness.rows("SELECT status FROM subscriptions") == [("suspended",)]


# A worker whose process dies (SIGKILL) at its first ack: after the batch committed and
# its results were published in their AMQP transaction, before any message was acked.
KILLED_BEFORE_ACK = """
import os, signal, sys
from dbimport import broker

def die(self, tag):
    os.kill(os.getpid(), signal.SIGKILL)

broker.Broker.ack_through = die
from dbimport.cli import main
sys.exit(main(["run", "--until-empty"]))
"""


def wait_for_ready(harness: Harness, count: int, timeout_s: float = 10.0) -> None:
    """Until the broker has put `count` messages back on the input queue."""
    deadline = time.monotonic() + timeout_s
    while harness.queue_depth(harness.settings.import_queue) < count:
        assert time.monotonic() < deadline, "the killed worker's messages did not come back"
        time.sleep(0.05)


def test_a_worker_killed_after_publishing_before_acking_answers_again_the_same_without_second_events(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker process that is killed with SIGKILL after it committed a batch
    and published its results but before it acked, when the broker redelivers the
    batch to a new worker, then every message is answered a second time with the
    same result, and no event is recorded twice."""
    messages = [
        msg(email="ann@example.com", feedback_id="ann", data={"_fname": "Ann", "subscriptions": [EMAIL_SUB]}),
        msg(email="ann@example.com", feedback_id="ann again",
            data={"_lname": "Lee", "subscriptions": [{**EMAIL_SUB, "status": "unsubscribed"}]}),
        msg(matching="phone", phone="+79000000011", feedback_id="phone", data={"_fname": "Bo"}),
        msg(email="bad", feedback_id="bad input"),
        msg(matching="profile_id", profile_id="0123456789abcdef01234567", feedback_id="not found"),
    ]
    harness.publish(*messages)
    # A long batch wait, so that the killed worker takes all messages in one batch.
    env = worker_env(harness.settings, IMPORT_BATCH_WAIT_MS="500")
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_ACK], env=env, cwd=tmp_path, timeout=60,
                            capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    answered_before_crash = harness.results()
    assert [r["feedback_id"] for r in answered_before_crash] == [m["feedback_id"] for m in messages]
    events = harness.rows(EVENT_ROWS)
    assert sorted(kind for kind, *_ in events) == [
        "profile_created", "profile_created", "profile_updated", "subscribed", "subscription_status_changed",
    ]

    wait_for_ready(harness, len(messages))
    stats = harness.run()
    answered_again = harness.results()

    assert answered_again == answered_before_crash
    # Bad input is not in the message log: it is checked again, to the same answer.
    assert stats.replayed == len(messages) - 1
    assert harness.rows(EVENT_ROWS) == events
    assert harness.count("SELECT count(*) FROM profiles") == 2
    assert harness.queue_depth(harness.settings.import_queue) == 0
