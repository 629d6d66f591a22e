"""No message can stall the queue: a result's AMQP properties are valid whatever the input
carried, and a result that cannot be built or encoded is that message's 500 and a dead
letter, never an outage (docs/contract.md, "The result"; docs/operations.md)."""
from __future__ import annotations

import pika
import pika.exceptions
import pytest

from conftest import Harness, msg
from dbimport.broker import DEAD_REASON_HEADER
from dbimport.broker.connection import translate
from dbimport.config import Settings
from dbimport.plugins import get_plugin_manager
from dbimport.worker import RunLimits, Worker
from faults.plugins import FAULT_MODE, from_environment

CYRILLIC_255 = "Ж" * 255  # 255 characters, 510 bytes in UTF-8: no AMQP short string


def run_worker(harness: Harness, settings: Settings | None = None, **env: str) -> Worker:
    pm = get_plugin_manager(extra_plugins=from_environment(env))
    worker = Worker(settings or harness.settings, plugin_manager=pm)
    worker.run(RunLimits(until_empty=True))
    return worker


def test_a_long_cyrillic_feedback_id_is_answered_and_the_messages_behind_it_too(harness: Harness) -> None:
    """Given a feedback_id of 255 Cyrillic letters (valid: at most 255 characters, but 510
    bytes), then its result carries the whole feedback_id in the body and no correlation_id,
    and the message behind it is answered as usual, with no reconnect."""
    harness.publish(msg(email="ivan@example.com", feedback_id=CYRILLIC_255),
                    msg(email="next@example.com", feedback_id="next"))
    worker = run_worker(harness)
    results = harness.result_messages()
    assert [(props.correlation_id, body_of(raw)["feedback_id"], body_of(raw)["error"]) for props, raw in results] == [
        (None, CYRILLIC_255, 0), ("next", "next", 0),
    ]
    assert worker.stats.handled == 2 and worker.broker._connections == 1


def test_the_input_correlation_id_at_255_bytes_is_echoed_as_it_is(harness: Harness) -> None:
    at_limit = "я" * 127 + "x"  # 255 bytes
    harness.publish(msg(email="cid@example.com", feedback_id="cid"),
                    properties=pika.BasicProperties(delivery_mode=2, correlation_id=at_limit))
    run_worker(harness)
    [(props, raw)] = harness.result_messages()
    assert props.correlation_id == at_limit and body_of(raw)["error"] == 0


def test_a_poison_message_with_headers_filling_a_frame_is_dead_lettered_without_them(harness: Harness) -> None:
    """Given a message whose own headers fill nearly a whole AMQP frame (the broker took it)
    and that fails internally every time, then it is answered 500 and its dead letter, which
    adds our reason headers, is published without the original headers rather than not at
    all; the next message is answered as usual."""
    poison = "poison-frame@example.com"
    big_headers = headers_filling_a_frame(pika.BasicProperties(delivery_mode=2), spare_bytes=16)
    harness.publish(msg(matching=FAULT_MODE, email=poison, feedback_id="frame"),
                    properties=pika.BasicProperties(delivery_mode=2, headers=big_headers))
    harness.publish(msg(email="after@example.com", feedback_id="after"))
    settings = harness.settings.replace(max_deliveries=1)
    run_worker(harness, settings, FAULT_POISON_EMAILS=poison)
    answers = {body_of(raw)["feedback_id"]: body_of(raw)["error"] for _props, raw in harness.result_messages()}
    assert answers == {"frame": 500, "after": 0}
    [(props, _body)] = harness.messages(harness.settings.dead_queue)
    assert DEAD_REASON_HEADER in props.headers and "h0" not in props.headers
    assert props.headers["x-dbimport-headers-dropped"] is True


def test_a_result_that_cannot_be_encoded_is_that_messages_500_and_a_dead_letter(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a bug that gives one result a correlation_id no AMQP short string can hold
    (what a 510-byte feedback_id did), then that message is answered 500 without it and
    dead-lettered, the others are answered as usual, and the worker never reconnects."""
    from dbimport import worker as worker_module

    real = worker_module.result_correlation_id

    def buggy(correlation_id: object, feedback_id: str) -> object:
        return CYRILLIC_255 if feedback_id == "bug" else real(correlation_id, feedback_id)  # type: ignore[arg-type]

    monkeypatch.setattr(worker_module, "result_correlation_id", buggy)
    harness.publish(msg(email="a@example.com", feedback_id="before"), msg(email="b@example.com", feedback_id="bug"),
                    msg(email="c@example.com", feedback_id="after"))
    worker = run_worker(harness)
    answers = [(body_of(raw)["feedback_id"], body_of(raw)["error"]) for _props, raw in harness.result_messages()]
    assert sorted(answers) == [("after", 0), ("before", 0), ("bug", 500)]
    [(props, body)] = harness.messages(harness.settings.dead_queue)
    assert b'"bug"' in body and "ShortStringTooLong" in props.headers[DEAD_REASON_HEADER]
    assert worker.broker._connections == 1 and worker.stats.handled == 3


def test_a_result_that_cannot_be_built_is_that_messages_500(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbimport.results import Result

    real = Result.to_json

    def broken(self: Result) -> bytes:
        if self.feedback_id == "bug" and self.error == 0:
            raise ValueError("cannot serialise")
        return real(self)

    monkeypatch.setattr(Result, "to_json", broken)
    harness.publish(msg(email="b@example.com", feedback_id="bug"), msg(email="c@example.com", feedback_id="after"))
    run_worker(harness)
    answers = sorted((body_of(raw)["feedback_id"], body_of(raw)["error"]) for _props, raw in harness.result_messages())
    assert answers == [("after", 0), ("bug", 500)]
    assert len(harness.messages(harness.settings.dead_queue)) == 1


def test_pika_encoding_errors_are_not_taken_for_a_lost_broker(settings: Settings) -> None:
    """Only a lost connection or channel is an outage; what pika cannot encode is not."""
    assert translate(pika.exceptions.ShortStringTooLong(b"x" * 300), settings, "publish") is None
    assert translate(pika.exceptions.StreamLostError("gone"), settings, "publish") is not None


def headers_filling_a_frame(properties: pika.BasicProperties, *, spare_bytes: int) -> dict[str, str]:
    """Headers that make the header frame of a message `spare_bytes` short of frame_max."""
    import pika.frame

    frame_max = pika.ConnectionParameters.DEFAULT_FRAME_MAX
    headers = {f"h{i}": "x" * 1000 for i in range(120)}
    properties.headers = headers
    size = len(pika.frame.Header(1, 100, properties).marshal())
    headers["pad"] = "x" * (frame_max - spare_bytes - size - len(b"\x03padS\x00\x00\x00\x00"))
    assert len(pika.frame.Header(1, 100, properties).marshal()) == frame_max - spare_bytes
    return headers


def body_of(raw: bytes) -> dict[str, object]:
    import orjson

    value = orjson.loads(raw)
    assert isinstance(value, dict)
    return value
