"""Never lose, never duplicate: the worker under crashes, outages and competing workers.

Each test publishes a stream of thousands of valid messages over a few hundred match
values, injects a fault while worker processes work, lets them finish the drain, and
then makes the checks of faults.checks: every message answered (several answers of
one message agree), exactly one profile per match value, no error result, and every
message applied once (one profile event each).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import psycopg.conninfo
import pytest

from conftest import Harness, answered, msg
from dbimport.broker import Delivery
from dbimport.pipeline import message_key
from dbimport.store import Store
from faults.checks import assert_nothing_lost_nothing_twice, by_mode_value, email_stream, modes_stream
from faults.plugins import FAULT_MODE
from faults.processes import WorkerProcess, children_of, crash_at_batch, log_lines, wait_for, worker_env
from faults.proxy import TcpProxy
from faults.services import (
    backends_waiting_on_a_lock,
    close_worker_connections,
    queue_counts,
    terminate_worker_backends,
    worker_connections,
)

pytestmark = pytest.mark.slow

DRAIN_TIMEOUT_S = 180.0
POSTGRES = ("127.0.0.1", 5432)
# A pause per look-up inside each transaction (the fault_email mode) while faults are
# injected: the stream lasts while the test is at work, however fast the machine.
SLOW_PACE_S = "0.15"


def slow_down(tmp_path: Path) -> Path:
    """The pace file of the fault_email mode, set to a slow pace."""
    pace = tmp_path / "pace"
    pace.write_text(SLOW_PACE_S)
    return pace


def full_speed(pace: Path) -> None:
    pace.write_text("0")


def stopped_line(harness: Harness) -> str:
    lines = log_lines(harness.settings, "stopped: handled=")
    return lines[-1] if lines else ""


def stopped_count(harness: Harness, name: str) -> int:
    """A counter of the last run's `stopped:` line (replayed, requeued...)."""
    for part in stopped_line(harness).split():
        key, _, value = part.partition("=")
        if key == name:
            return int(value)
    raise AssertionError(f"no {name}= in the last stopped line: {stopped_line(harness)!r}")


# --- 1. crash mid-stream ---------------------------------------------------------------------


def test_kill_9_three_times_mid_stream_loses_nothing_and_applies_nothing_twice(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given 3,000 messages over 300 e-mails, when the worker is killed with SIGKILL three
    times while it works and then restarted to drain the queue, then nothing is lost and
    nothing is applied twice."""
    messages = email_stream("kill")
    harness.publish(*messages)
    env = worker_env(harness.settings)

    answered_at_kill = []
    for _ in range(3):
        before = answered(harness)
        worker = WorkerProcess(["run"], env, tmp_path)
        try:
            wait_for(lambda before=before: answered(harness) >= before + 100, "the restarted worker's results",
                     while_alive=worker)
            assert worker.kill() == -signal.SIGKILL
            answered_at_kill.append(answered(harness))
        finally:
            worker.stop()
    assert answered_at_kill[-1] < len(messages), f"the stream was done before the last kill: {answered_at_kill}"

    final = WorkerProcess(["run", "--until-empty"], env, tmp_path)
    assert final.wait(DRAIN_TIMEOUT_S) == 0, final.output()[-3000:]

    assert_nothing_lost_nothing_twice(harness, messages, harness.results())
    # Only the last run stopped by itself; the killed ones left no "stopped" line.
    assert len(log_lines(harness.settings, "stopped: handled=")) == 1


# --- 2. database connections killed ----------------------------------------------------------


def test_database_connections_killed_every_second_lose_nothing_and_apply_nothing_twice(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker draining 3,000 messages, when its PostgreSQL connections are killed
    with pg_terminate_backend about every second, then it reconnects, retries the batch in
    hand (answering a committed one from the message log), and the drain is exact."""
    messages = email_stream("pgkill", matching=FAULT_MODE)
    harness.publish(*messages)
    pace = slow_down(tmp_path)
    env = worker_env(harness.settings, FAULT_PACE_FILE=str(pace))
    worker = WorkerProcess(["run", "--until-empty"], env, tmp_path, launcher=True)
    kills: list[tuple[int, int]] = []  # (backends terminated, results published then)
    try:
        wait_for(lambda: answered(harness) >= 100, "the first results", while_alive=worker)
        deadline = time.monotonic() + 60
        while worker.alive() and sum(1 for n, _ in kills if n) < 5 and time.monotonic() < deadline:
            kills.append((terminate_worker_backends(harness.settings.postgres_dsn), answered(harness)))
            time.sleep(1.0)  # the fault's pace, not a wait for a condition
        full_speed(pace)
        assert worker.wait(DRAIN_TIMEOUT_S) == 0, worker.output()[-3000:]
    finally:
        worker.stop()

    mid_stream = [k for k in kills if k[0] > 0 and k[1] < len(messages)]
    assert len(mid_stream) >= 3, f"too few kills landed mid-stream: {kills}"
    assert len(log_lines(harness.settings, "retrying the whole transaction")) >= 3
    assert_nothing_lost_nothing_twice(harness, messages, harness.results())


@pytest.mark.parametrize("left_in", ["pipeline mode", "a transaction"])
def test_a_connection_a_failure_left_in_pipeline_mode_or_a_transaction_is_replaced(
    harness: Harness, left_in: str,
) -> None:
    """Given the store's connection left open but not idle by a failure (a connection
    terminated in the middle of a pipeline has been seen to stay in pipeline mode, busy,
    refusing every query after, and a worker then retried its batch for ever on it), when
    the next transaction starts, then it runs on a fresh connection."""
    store = Store(harness.settings.postgres_dsn)
    try:
        with store.transaction() as conn:
            first = conn.info.backend_pid
        stuck = store.connect()
        if left_in == "pipeline mode":
            stuck.pgconn.enter_pipeline_mode()
        else:
            stuck.execute("BEGIN")
        with store.transaction() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != first
        assert stuck.closed
    finally:
        store.close()


# --- 3. database outage ----------------------------------------------------------------------


def through(proxy: TcpProxy, dsn: str) -> str:
    """`dsn` with its host and port replaced by the proxy's."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.update(host="127.0.0.1", port=str(proxy.port))
    return psycopg.conninfo.make_conninfo(**params)


def test_an_eight_second_database_outage_is_waited_out_on_the_same_amqp_connection(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker reaching PostgreSQL through a proxy, with 3 s AMQP heartbeats, when the
    proxy refuses connections (and cuts the live ones) for 8 s mid-stream, then the worker
    retries, answers heartbeats meanwhile so that its AMQP connection survives, publishes
    and acks nothing during the outage, and goes on to an exact drain without an error."""
    messages = email_stream("outage")
    harness.publish(*messages)
    settings = harness.settings
    with TcpProxy(POSTGRES) as proxy:
        env = worker_env(settings, POSTGRES_DSN=through(proxy, settings.postgres_dsn),
                         RABBITMQ_HEARTBEAT_S="3")
        worker = WorkerProcess(["run"], env, tmp_path)
        try:
            wait_for(lambda: answered(harness) >= 300, "the first results", while_alive=worker)
            [before] = worker_connections(settings.import_queue)

            retries_before = len(log_lines(settings, "database attempt"))
            assert proxy.refuse() >= 1, "the worker's database connection was not cut"
            outage_ends = time.monotonic() + 8.0
            # Once the worker is retrying, it holds its batch: nothing may move until the end.
            wait_for(lambda: len(log_lines(settings, "database attempt")) > retries_before,
                     "the worker to notice the outage", timeout_s=8.0, while_alive=worker)
            frozen_results = answered(harness)
            frozen_counts = queue_counts(settings.import_queue)
            samples = []
            while time.monotonic() < outage_ends:
                samples.append(answered(harness))
                time.sleep(0.1)
            late_counts = queue_counts(settings.import_queue)
            proxy.resume()

            assert frozen_counts.unacked > 0, frozen_counts
            assert late_counts == frozen_counts, "messages were acked or given back during the outage"
            assert set(samples) == {frozen_results}, "results were published during the outage"

            wait_for(lambda: queue_counts(settings.import_queue) == (0, 0) and answered(harness) >= len(messages),
                     "the drain after the outage", timeout_s=DRAIN_TIMEOUT_S, while_alive=worker)
            [after] = worker_connections(settings.import_queue)
            worker.signal(signal.SIGTERM)
            assert worker.wait() == 0
        finally:
            worker.stop()

    assert after == before, "the worker lost its AMQP connection during the outage"
    assert len(log_lines(settings, "database attempt")) >= 2, "no retries were logged"
    for sign in ("lost RabbitMQ", "start attempt", "giving unsettled messages back"):
        assert log_lines(settings, sign) == [], f"{sign!r} in the job log"
    assert_nothing_lost_nothing_twice(harness, messages, harness.results())


# --- 4. broker connection lost ----------------------------------------------------------------


def test_the_broker_closing_the_worker_connection_three_times_loses_nothing_and_applies_nothing_twice(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker draining 3,000 messages, when the broker closes its connection three
    times (rabbitmqctl close_connection, as a broker restart does), then the worker
    reconnects each time, its unacked messages come back, and each message is applied
    once: one profile event per message, one profile_created per e-mail."""
    messages = email_stream("amqp", matching=FAULT_MODE)
    harness.publish(*messages)
    pace = slow_down(tmp_path)
    env = worker_env(harness.settings, FAULT_PACE_FILE=str(pace))
    worker = WorkerProcess(["run", "--until-empty"], env, tmp_path, launcher=True)
    closes = []
    try:
        for _ in range(3):
            floor = answered(harness) + 100
            wait_for(lambda floor=floor: answered(harness) >= floor, "progress since the last close",
                     while_alive=worker)
            closed = close_worker_connections(harness.settings.import_queue)
            assert [c.worker_pid for c in closed] == [worker.pid], closed
            closes.append((closed[0].broker_pid, answered(harness)))
        full_speed(pace)
        assert worker.wait(DRAIN_TIMEOUT_S) == 0, worker.output()[-3000:]
    finally:
        worker.stop()

    assert len({pid for pid, _ in closes}) == 3, "each close should hit a new connection"
    assert closes[-1][1] < len(messages), f"the stream was done before the last close: {closes}"
    assert len(log_lines(harness.settings, "lost RabbitMQ")) >= 3
    drain = assert_nothing_lost_nothing_twice(harness, messages, harness.results())
    assert drain.events == len(messages)


# --- 5. competing workers --------------------------------------------------------------------


def test_two_workers_under_one_supervisor_with_each_killed_once_create_one_profile_per_value(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a shuffled stream over every mode that creates, each value sent in several
    spellings, when `run --workers 2` drains it and each of its two workers is killed with
    SIGKILL once mid-stream (the supervisor restarts them), then every value has exactly
    one profile and every message is answered and applied once."""
    messages = modes_stream("two", values=50, copies=8)
    harness.publish(*messages)
    env = worker_env(harness.settings)
    supervisor = WorkerProcess(["run", "--workers", "2", "--until-empty"], env, tmp_path)
    killed: list[tuple[int, int]] = []
    try:
        wait_for(lambda: len(children_of(supervisor.pid)) == 2, "two workers", while_alive=supervisor)
        first, second = children_of(supervisor.pid)
        for victim, floor in ((first, 100), (second, 300)):
            wait_for(lambda floor=floor: answered(harness) >= floor, f"{floor} results", while_alive=supervisor)
            os.kill(victim, signal.SIGKILL)
            killed.append((victim, answered(harness)))
        assert supervisor.wait(DRAIN_TIMEOUT_S) == 0, supervisor.output()[-3000:]
    finally:
        supervisor.stop()

    assert all(n < len(messages) for _pid, n in killed), f"the stream was done before a kill: {killed}"
    restarts = log_lines(harness.settings, "died with signal SIGKILL; restarting")
    assert len(restarts) == 2, restarts
    assert_nothing_lost_nothing_twice(harness, messages, harness.results(), identity=by_mode_value)


def test_four_worker_processes_with_their_database_connections_killed_create_one_profile_per_value(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given the same kind of stream, when four separate worker processes drain it while
    their PostgreSQL connections are killed again and again, then every value still has
    exactly one profile and every message is answered and applied once."""
    messages = modes_stream("four", values=50, copies=8)
    harness.publish(*messages)
    env = worker_env(harness.settings, IMPORT_BATCH_SIZE="20", IMPORT_PREFETCH="40")
    workers = [WorkerProcess(["run", "--until-empty"], env, tmp_path) for _ in range(4)]
    kills: list[tuple[int, int]] = []
    try:
        wait_for(lambda: answered(harness) >= 100, "the first results", while_alive=workers[0])
        while any(w.alive() for w in workers) and len(kills) < 6:
            kills.append((terminate_worker_backends(harness.settings.postgres_dsn), answered(harness)))
            time.sleep(0.3)  # the fault's pace
        for worker in workers:
            assert worker.wait(DRAIN_TIMEOUT_S) == 0, worker.output()[-3000:]
    finally:
        for worker in workers:
            worker.stop()

    mid_stream = [k for k in kills if k[0] > 0 and k[1] < len(messages)]
    assert len(mid_stream) >= 2, f"too few kills landed mid-stream: {kills}"
    handled = [int(line.split("handled=")[1].split()[0]) for line in log_lines(harness.settings, "stopped: handled=")]
    assert len(handled) == 4 and min(handled) > 0, handled
    assert_nothing_lost_nothing_twice(harness, messages, harness.results(), identity=by_mode_value)


def test_a_message_redelivered_to_another_worker_while_the_first_still_applies_it_is_applied_once(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given worker A holding a message inside its open transaction and worker B idle on the
    same queue, when the broker closes A's connection (the message goes back, B takes it
    redelivered) and A's transaction goes on and commits later, then the message is applied
    once (one profile event), and a newer message for the same e-mail, answered by B,
    keeps its data.

    Either arbitration passes: B waits for A's transaction and answers from the message
    log, or B applies the message and A's late transaction is not applied."""
    release = tmp_path / "release"
    holding = tmp_path / "holding"
    first = msg(matching=FAULT_MODE, email="held@example.com", feedback_id="held-1", data={"_fname": "older"})
    newer = msg(matching=FAULT_MODE, email="held@example.com", feedback_id="held-2", data={"_fname": "newer"})
    settings = harness.settings
    env_a = worker_env(settings, FAULT_HOLD_EMAIL="held@example.com",
                       FAULT_HOLD_MARKER=str(holding), FAULT_HOLD_RELEASE=str(release))
    a = WorkerProcess(["run"], env_a, tmp_path, launcher=True)
    b = None
    try:
        harness.publish(first)
        wait_for(holding.exists, "worker A to hold the message in its transaction", while_alive=a)
        b = WorkerProcess(["run"], worker_env(settings), tmp_path, launcher=True)
        wait_for(lambda: harness.channel.queue_declare(settings.import_queue, passive=True).method.consumer_count == 2,
                 "worker B to consume", while_alive=b)
        closed = close_worker_connections(settings.import_queue, worker_pid=a.pid)
        assert [c.worker_pid for c in closed] == [a.pid]
        wait_for(lambda: answered(harness) >= 1 or backends_waiting_on_a_lock(settings.postgres_dsn),
                 "B to answer the redelivered message, or to wait for A", while_alive=b)
        if answered(harness) >= 1:
            # B did not wait: the newer message is applied before A's transaction goes on.
            harness.publish(newer)
            wait_for(lambda: answered(harness) >= 2, "B's answer to the newer message", while_alive=b)
            release.touch()
        else:
            release.touch()
            harness.publish(newer)
        wait_for(lambda: log_lines(settings, f"[{a.pid}]: lost RabbitMQ"), "A to finish its transaction",
                 while_alive=a)
        wait_for(lambda: answered(harness) >= 2 and queue_counts(settings.import_queue) == (0, 0),
                 "everything answered and acked", while_alive=a)
        for worker in (a, b):
            worker.signal(signal.SIGTERM)
            assert worker.wait() == 0, worker.output()[-3000:]
    finally:
        release.touch()
        a.stop()
        if b is not None:
            b.stop()

    results = harness.results()
    by_fid = {fid: [r for r in results if r["feedback_id"] == fid] for fid in ("held-1", "held-2")}
    assert all(len(rs) >= 1 and all(r == rs[0] and r["error"] == 0 for r in rs) for rs in by_fid.values()), results
    events = harness.rows(
        "SELECT feedback_id, kind FROM events WHERE kind IN ('profile_created', 'profile_updated') ORDER BY event_id"
    )
    names = harness.rows("SELECT fields->>'_fname' FROM profiles")
    assert (events, names) == ([("held-1", "profile_created"), ("held-2", "profile_updated")], [("newer",)]), (
        f"held-1 was applied by both workers: events {events}, profile's _fname {names}"
    )


# --- 6. redelivery is idempotent --------------------------------------------------------------


def logged_results(harness: Harness, messages: dict[str, dict], fids: list[str]) -> dict[str, dict]:
    """The message log's result for each of `fids`, by the key the worker computes."""
    out = {}
    for fid in fids:
        key = message_key(Delivery(tag=0, body=orjson.dumps(messages[fid]), redelivered=False))
        rows = harness.rows("SELECT result FROM message_log WHERE message_key = %s", key)
        assert len(rows) == 1, f"{fid} is not in the message log"
        out[fid] = orjson.loads(bytes(rows[0][0]))
    return out


def test_a_batch_committed_but_not_answered_before_a_crash_is_answered_from_the_log_not_applied_again(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker that dies (os._exit) right after its third batch commits, before it
    publishes results or acks, when a new worker drains the queue, then that batch's
    messages record no second event and are answered with the result logged at commit."""
    messages = email_stream("commit", count=600, emails=60)
    harness.publish(*messages)
    env = worker_env(harness.settings)
    committed = crash_at_batch(env, tmp_path, "FAULT_CRASH_AFTER_COMMIT")
    before = harness.results()
    assert not {r["feedback_id"] for r in before} & set(committed), "the crashed batch was answered"
    sent = {m["feedback_id"]: m for m in messages}
    logged = logged_results(harness, sent, committed)

    done = WorkerProcess(["run", "--until-empty"], env, tmp_path)
    assert done.wait(DRAIN_TIMEOUT_S) == 0, done.output()[-3000:]

    drain = assert_nothing_lost_nothing_twice(harness, messages, before + harness.results())
    assert {fid: drain.results[fid] for fid in committed} == {fid: [logged[fid]] for fid in committed}
    # The message log recognised exactly the crashed batch.
    assert stopped_count(harness, "replayed") == len(committed)


def test_a_batch_answered_but_not_acked_before_a_crash_gets_the_same_results_again(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker that dies after publishing its third batch's results, before the ack,
    when a new worker drains the queue, then those messages are answered a second time
    with identical results, and applied once."""
    messages = email_stream("ack", count=600, emails=60)
    harness.publish(*messages)
    env = worker_env(harness.settings)
    published = set(crash_at_batch(env, tmp_path, "FAULT_CRASH_BEFORE_ACK"))

    done = WorkerProcess(["run", "--until-empty"], env, tmp_path)
    assert done.wait(DRAIN_TIMEOUT_S) == 0, done.output()[-3000:]

    drain = assert_nothing_lost_nothing_twice(harness, messages, harness.results())
    assert drain.duplicated == published
    assert all(len(drain.results[fid]) == 2 for fid in published)
    assert stopped_count(harness, "replayed") == len(published)
