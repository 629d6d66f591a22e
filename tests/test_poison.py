"""Poison messages: an internal failure is retried a bounded number of times, then answered
500 and dead-lettered with its reason; `replay-dead` puts it back once the cause is fixed."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Harness, msg
from dbimport.broker import DEAD_REASON_HEADER, DEAD_SOURCE_HEADER
from faults.checks import Message, assert_nothing_lost_nothing_twice, email_stream
from faults.plugins import FAULT_MODE
from faults.processes import WorkerProcess, command, log_lines, worker_env

MAX_DELIVERIES = 3
POISON_EMAILS = ("poison-0@example.com", "poison-1@example.com")
DRAIN_TIMEOUT_S = 120.0


def poisoned_stream() -> tuple[list[Message], list[Message]]:
    """600 good messages over 60 e-mails, with two poison ones among them."""
    good = email_stream("good", count=600, emails=60, matching=FAULT_MODE)
    poison = [
        msg(matching=FAULT_MODE, email=email, feedback_id=f"poison-{i}", data={"_fname": "p"})
        for i, email in enumerate(POISON_EMAILS)
    ]
    stream = list(good)
    stream.insert(120, poison[0])
    stream.insert(431, poison[1])
    return stream, poison


def drain(harness: Harness, tmp_path: Path, **env: str) -> None:
    worker = WorkerProcess(["run", "--until-empty"], worker_env(harness.settings, **env), tmp_path,
                           launcher=True)
    # Bounded: with the poison retried for ever, this would time out.
    assert worker.wait(DRAIN_TIMEOUT_S) == 0, worker.output()[-3000:]


def dead_letters(harness: Harness) -> list[tuple[Any, bytes]]:
    return harness.messages(harness.settings.dead_queue)


def bury(harness: Harness, tmp_path: Path) -> tuple[list[Message], list[Message], list[dict[str, Any]]]:
    """Drain a stream holding two poison messages with the plugin failing on them."""
    stream, poison = poisoned_stream()
    harness.publish(*stream)
    drain(harness, tmp_path, IMPORT_MAX_DELIVERIES=str(MAX_DELIVERIES), FAULT_POISON_EMAILS=",".join(POISON_EMAILS))
    return stream, poison, harness.results()


@pytest.mark.slow
def test_a_message_failing_internally_gets_500_and_goes_to_the_dead_queue_after_max_deliveries(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a matcher plugin that fails on two addresses, when a stream of 602 messages
    holding them is drained with IMPORT_MAX_DELIVERIES=3, then each poison message is
    tried exactly three times, answered once with error 500, and copied to the dead
    queue with the reason in its headers; every other message, its batch-mates
    included, is answered 0 and applied once; and the worker stops by itself."""
    stream, poison, results = bury(harness, tmp_path)

    poison_ids = {m["feedback_id"] for m in poison}
    poison_results = [r for r in results if r["feedback_id"] in poison_ids]
    assert sorted(r["feedback_id"] for r in poison_results) == sorted(poison_ids), "answered once each"
    for result in poison_results:
        assert result["error"] == 500, result
        assert result["error_text"].startswith("internal error: RuntimeError"), result
        assert result["profile_id"] == ""
    good = [m for m in stream if m["feedback_id"] not in poison_ids]
    assert_nothing_lost_nothing_twice(harness, good, [r for r in results if r["feedback_id"] not in poison_ids])

    letters = dead_letters(harness)
    assert sorted(body for _props, body in letters) == sorted(orjson.dumps(m) for m in poison)
    for props, body in letters:
        email = orjson.loads(body)["email"]
        assert f"cannot look up {email}" in props.headers[DEAD_REASON_HEADER]
        assert props.headers[DEAD_SOURCE_HEADER] == harness.settings.import_queue
        assert props.delivery_mode == 2

    assert sorted(n for (n,) in harness.rows("SELECT failures FROM delivery_failures")) == [MAX_DELIVERIES] * 2
    assert harness.count("SELECT count(*) FROM profiles WHERE email LIKE 'poison-%%'") == 0
    for attempt in range(1, MAX_DELIVERIES):
        assert len(log_lines(harness.settings, f"failed {attempt} of {MAX_DELIVERIES} times")) == 2
    assert len(log_lines(harness.settings, f"failed {MAX_DELIVERIES} times; answering 500")) == 2


@pytest.mark.slow
def test_replay_dead_puts_dead_letters_back_and_once_fixed_they_are_answered_0(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given two dead letters, when the plugin is fixed and `dbimport-worker replay-dead` runs,
    then both go back to the import queue (the dead queue is empty), and the next drain
    answers them 0 and creates their profiles, each applied once."""
    bury(harness, tmp_path)
    settings = harness.settings
    assert harness.queue_depth(settings.dead_queue) == 2

    done = subprocess.run(command("replay-dead"), env=worker_env(settings), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"replayed 2 message(s) from {settings.dead_queue} to {settings.import_queue}" in done.stdout
    assert harness.queue_depth(settings.dead_queue) == 0
    assert harness.queue_depth(settings.import_queue) == 2
    assert harness.count("SELECT count(*) FROM delivery_failures") == 0

    drain(harness, tmp_path, IMPORT_MAX_DELIVERIES=str(MAX_DELIVERIES))  # the plugin, fixed

    results = harness.results()
    assert sorted((r["feedback_id"], r["error"]) for r in results) == [("poison-0", 0), ("poison-1", 0)]
    created = harness.rows("SELECT email, profile_id FROM profiles WHERE email LIKE 'poison-%%' ORDER BY email")
    assert [email for email, _ in created] == list(POISON_EMAILS)
    assert {r["profile_id"] for r in results} == {pid for _, pid in created}
    assert sorted(harness.rows("SELECT feedback_id, kind FROM events WHERE feedback_id LIKE 'poison-%%'")) == [
        ("poison-0", "profile_created"), ("poison-1", "profile_created"),
    ]
    assert harness.queue_depth(settings.dead_queue) == 0
