"""Queue declarations on the broker, and acks: only after the result is safely in the broker, within the prefetch."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from conftest import Harness, amqp_connection, cli, msg, worker_env
from dbimport.broker import Delivery, Outgoing
from dbimport.config import Settings, load_settings
from dbimport.errors import BadInput, BrokerUnavailable, ResultUnroutable
from dbimport.pipeline import Outcome, Prepared
from dbimport.results import Result
from dbimport.worker import RunLimits, Worker

PRECONDITION_FAILED = 406
OTHER_TTL_MS = 120_000  # long enough to read the results after the run


def declare(name: str, *, durable: bool = True, arguments: dict[str, Any] | None = None) -> int:
    """Declare `name` on a fresh channel: 0 if the broker agrees, else its reply code.

    A passive declare cannot read a queue's arguments; an active one with the
    expected arguments succeeds only if they are exactly the queue's own.
    """
    conn = amqp_connection()
    try:
        conn.channel().queue_declare(name, durable=durable, arguments=arguments)
        return 0
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        if conn.is_open:
            conn.close()


@pytest.fixture
def amqp(services: None) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    conn = amqp_connection()
    yield conn.channel()
    if conn.is_open:
        conn.close()


# --- declarations ---------------------------------------------------------------------


def test_the_result_queue_is_durable_with_the_ttl_in_milliseconds_from_a_numeric_string(
    settings: Settings, tmp_path: Path,
) -> None:
    """Given main.json says "RABBITMQ_X_MESSAGE_TTL": "3600", when the worker starts on absent
    queues, then it declares the result queue durable with x-message-ttl 3600000."""
    config = tmp_path / "main.json"
    config.write_text(json.dumps({"RABBITMQ_X_MESSAGE_TTL": "3600"}))
    ttl_s = load_settings(config, environ={}).result_ttl_s
    Worker(settings.replace(result_ttl_s=ttl_s)).run(RunLimits(until_empty=True))

    assert declare(settings.result_queue, arguments={"x-message-ttl": 3_600_000}) == 0
    assert declare(settings.result_queue, arguments={"x-message-ttl": 3600}) == PRECONDITION_FAILED
    assert declare(settings.result_queue, arguments=None) == PRECONDITION_FAILED
    assert declare(settings.result_queue, durable=False, arguments={"x-message-ttl": 3_600_000}) == PRECONDITION_FAILED


def test_the_input_and_dead_letter_queues_are_durable_without_arguments(settings: Settings) -> None:
    Worker(settings).run(RunLimits(until_empty=True))
    for queue in (settings.import_queue, settings.dead_queue):
        assert declare(queue) == 0
        assert declare(queue, durable=False) == PRECONDITION_FAILED
        assert declare(queue, arguments={"x-message-ttl": 1000}) == PRECONDITION_FAILED


def test_a_result_queue_with_other_arguments_is_used_as_it_is_with_one_warning(
    settings: Settings, amqp: Any, tmp_path: Path,
) -> None:
    """Given the result queue exists with another TTL, when the worker drains the queue,
    then every message is answered on that queue, one warning names the difference and
    the fix, and the worker neither crashes nor reconnects."""
    amqp.queue_declare(settings.result_queue, durable=True, arguments={"x-message-ttl": OTHER_TTL_MS})
    amqp.queue_declare(settings.import_queue, durable=True)
    for i in range(3):
        amqp.basic_publish("", settings.import_queue, json.dumps(msg(email=f"q{i}@example.com", feedback_id=f"q{i}")))

    done = cli("run", "--until-empty", env=worker_env(settings), timeout=60)

    assert done.returncode == 0, done.stderr
    answered = []
    while (got := amqp.basic_get(settings.result_queue, auto_ack=True))[0] is not None:
        answered.append(json.loads(got[2]))
    assert sorted(r["feedback_id"] for r in answered) == ["q0", "q1", "q2"]
    assert all(r["error"] == 0 for r in answered), answered
    log = Path(settings.log_path).read_text().splitlines()
    warnings = [line for line in log if " WARNING " in line and settings.result_queue in line]
    assert len(warnings) == 1, "\n".join(log)
    warning = warnings[0]
    assert "x-message-ttl" in warning and str(settings.result_ttl_ms) in warning and str(OTHER_TTL_MS) in warning
    assert "delete the queue" in warning or "policy" in warning
    assert not [line for line in log if "start attempt" in line or "reconnect" in line], "\n".join(log)
    # The queue is as it was.
    assert declare(settings.result_queue, arguments={"x-message-ttl": OTHER_TTL_MS}) == 0

    checked = cli("check", env=worker_env(settings), timeout=60)
    assert checked.returncode == 1, (checked.stdout, checked.stderr)
    assert settings.result_queue in checked.stdout


# --- acks: pure settling logic with a stub broker -------------------------------------


class StubBroker:
    """Records what reaches the broker, in order; `publish` may fail like the real one."""

    def __init__(self, failure: Exception | None) -> None:
        self.failure = failure
        self.log: list[str] = []

    def publish(self, messages: Sequence[Outgoing]) -> None:
        if self.failure is not None:
            raise self.failure
        self.log.append(f"publish {len(messages)}")

    def ack_through(self, tag: int) -> None:
        self.log.append(f"ack through {tag}")

    def requeue(self, tag: int) -> None:
        self.log.append(f"requeue {tag}")

    def requeue_through(self, tag: int) -> None:
        self.log.append(f"requeue through {tag}")


def outcomes() -> list[Outcome]:
    def delivery(tag: int) -> Delivery:
        return Delivery(tag=tag, body=json.dumps(msg(feedback_id=str(tag))).encode(), redelivered=False)

    return [
        Outcome(delivery(1), Result.ok(feedback_id="1", matching_field="email", profile_id="5f4fa1a5ce9448665fef548e")),
        Outcome(delivery(2), Result.failed(BadInput("data: required key"), feedback_id="2")),
        Outcome(delivery(3), None),  # an internal failure given back to the queue
    ]


def stub_worker(failure: Exception | None) -> tuple[Worker, StubBroker]:
    # The store is never reached: settle only talks to the broker.
    worker = Worker(Settings(postgres_dsn="postgresql://127.0.0.1:1/unused"))
    stub = StubBroker(failure)
    worker.broker = stub  # type: ignore[assignment]
    return worker, stub


@pytest.mark.parametrize("failure", [
    ResultUnroutable("1 message(s) were returned as unroutable"),
    BrokerUnavailable("RabbitMQ publish: ConnectionResetError"),
])
def test_when_results_cannot_be_published_nothing_is_acked_or_requeued(failure: Exception) -> None:
    worker, stub = stub_worker(failure)
    with pytest.raises(type(failure)):
        worker.settle(outcomes())
    assert stub.log == []


def test_acks_follow_the_publishing_of_the_results() -> None:
    worker, stub = stub_worker(None)
    worker.settle(outcomes())
    assert stub.log == ["publish 2", "requeue 3", "ack through 2"]


# --- acks: against the real broker ----------------------------------------------------


def test_a_message_whose_result_was_unroutable_is_redelivered_and_answered_once(
    harness: Harness, caplog: pytest.LogCaptureFixture,
) -> None:
    """Given the result queue vanishes before the first batch is settled, when the worker
    publishes, then the results come back unroutable and the messages stay unacked:
    they are redelivered after the worker reconnects (and declares the result queue
    again), and answered exactly once, with the results of the first attempt, with
    nothing applied twice."""
    harness.publish(
        msg(email="u1@example.com", feedback_id="u1"),
        msg(email="u2@example.com", feedback_id="u2", data={"_fname": "Ann"}),
        msg(db_id=99, email="u3@example.com", feedback_id="u3"),
    )
    worker = Worker(harness.settings)
    attempts: list[tuple[list[bool], list[bytes]]] = []
    settle = worker.settle

    def lose_the_result_queue_then_settle(outcomes: Sequence[Outcome]) -> None:
        if not attempts:
            harness.channel.queue_delete(harness.settings.result_queue)
        attempts.append(([o.delivery.redelivered for o in outcomes],
                         [o.result.to_json() for o in outcomes if o.result is not None]))
        settle(outcomes)

    worker.settle = lose_the_result_queue_then_settle  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="dbimport"):
        stats = worker.run(RunLimits(until_empty=True))

    assert any("unroutable" in r.getMessage() for r in caplog.records), caplog.text
    assert [redelivered for redelivered, _ in attempts] == [[False] * 3, [True] * 3]
    bodies = [body for _props, body in harness.result_messages()]
    assert bodies == attempts[0][1]
    assert [json.loads(b)["error"] for b in bodies] == [0, 0, 404]
    assert stats.handled == 3
    assert harness.queue_depth(harness.settings.import_queue) == 0
    assert harness.count("SELECT count(*) FROM profiles") == 2
    assert harness.rows("SELECT kind, feedback_id FROM events ORDER BY event_id") == [
        ("profile_created", "u1"), ("profile_created", "u2")]


def test_the_consumer_never_holds_more_unacked_messages_than_the_prefetch(harness: Harness) -> None:
    """Given IMPORT_PREFETCH=5 and batches of 2, then at every batch the broker has
    handed out at most 5 messages that are not acked yet, and the window is used."""
    total = 12
    harness.publish(*(msg(email=f"p{i}@example.com") for i in range(total)))
    worker = Worker(harness.settings.replace(prefetch=5, batch_size=2))
    unacked_seen: list[int] = []
    prepare_all = worker.pipeline.prepare_all

    def measure_then_prepare(deliveries: Sequence[Delivery]) -> list[Prepared]:
        # Let the broker push whatever the window allows, then ask it what is still ready.
        worker.broker.sleep(0.05)
        ready = harness.queue_depth(harness.settings.import_queue)
        # Acks sent for earlier batches count as done: this can only under-count.
        unacked_seen.append(total - worker.stats.handled - ready)
        return prepare_all(deliveries)

    worker.pipeline.prepare_all = measure_then_prepare  # type: ignore[method-assign]
    stats = worker.run(RunLimits(until_empty=True))

    assert stats.handled == total
    assert len(harness.results()) == total
    assert max(unacked_seen) == 5, unacked_seen
