"""The result (SPEC §1, §5; issue 2 point 6): its keys, its values, and its AMQP properties."""
from __future__ import annotations

import re
from typing import Any

import orjson
import pika

from conftest import Harness, msg

RESULT_KEYS = {"error", "error_text", "feedback_id", "matching_field", "profile_id"}
PROFILE_ID = re.compile(r"[0-9a-f]{24}")
PERSISTENT = 2


def publish_with(harness: Harness, message: Any, **properties: Any) -> None:
    harness.publish(message, properties=pika.BasicProperties(delivery_mode=PERSISTENT, **properties))


def assert_contract_shape(result: dict[str, Any]) -> None:
    """Exactly the contract's keys, each of its type; profile_id set on success only."""
    assert set(result) == RESULT_KEYS, result
    assert type(result["error"]) is int, result
    for key in RESULT_KEYS - {"error"}:
        assert type(result[key]) is str, (key, result)
    if result["error"] == 0:
        assert result["error_text"] == "", result
        assert PROFILE_ID.fullmatch(result["profile_id"]), result
    else:
        assert result["error_text"], result
        assert result["profile_id"] == "", result


def test_every_result_has_exactly_the_contract_keys(harness: Harness) -> None:
    """Given messages that succeed and fail in every way, each result has exactly
    error, error_text, feedback_id, matching_field and profile_id, with profile_id
    24 lowercase hex characters on success and "" on error."""
    # shared@ becomes ambiguous: one profile's subscription, another's e-mail.
    seeded, other = harness.import_(
        msg(email="owner@example.com", data={"subscriptions": [
            {"resource_id": 24, "channel": "email", "email": "shared@example.com"}]}),
        msg(matching="email_profile", email="shared@example.com"),
    )
    assert (seeded["error"], other["error"]) == (0, 0)
    results = harness.import_(
        msg(email="new@example.com", feedback_id="created"),
        msg(email="NEW@example.com", feedback_id="updated"),
        msg(matching="profile_id", profile_id=seeded["profile_id"], feedback_id="by-id"),
        b"{not json",
        msg(email="bad@example.com", data={"_sex": "other"}, feedback_id="bad-field"),
        msg(account_id=2, email="x@example.com", feedback_id="forbidden"),
        msg(email="nobody@example.com", update_only=True, feedback_id="not-found"),
        msg(email="shared@example.com", feedback_id="ambiguous"),
    )
    assert [(r["feedback_id"], r["error"]) for r in results] == [
        ("created", 0), ("updated", 0), ("by-id", 0), ("", 400), ("bad-field", 400),
        ("forbidden", 403), ("not-found", 404), ("ambiguous", 409),
    ]
    for result in results:
        assert_contract_shape(result)
    assert [r["matching_field"] for r in results[:3]] == ["email", "email", "profile_id"]
    assert results[0]["profile_id"] == results[1]["profile_id"]
    assert results[2]["profile_id"] == seeded["profile_id"]


def test_a_result_is_persistent_json(harness: Harness) -> None:
    """Every result message, success or error, is persistent (delivery_mode 2) with
    content_type application/json, and its body is one JSON object."""
    harness.publish(msg(email="ok@example.com", feedback_id="ok"), b"", msg(db_id=999, email="x@example.com"))
    harness.run()
    messages = harness.result_messages()
    assert len(messages) == 3
    for props, body in messages:
        assert props.delivery_mode == PERSISTENT, props
        assert props.content_type == "application/json", props
        assert_contract_shape(orjson.loads(body))
    assert [orjson.loads(body)["error"] for _props, body in messages] == [0, 400, 404]


def test_the_correlation_id_is_the_inputs_else_the_feedback_id(harness: Harness) -> None:
    """The result's correlation_id is the input's correlation_id property when it has
    one (bad input and unparseable bodies included), else the message's feedback_id,
    else there is none."""
    publish_with(harness, msg(email="a@example.com", feedback_id="fb-1"), correlation_id="corr-1")
    publish_with(harness, msg(email="b@example.com", feedback_id="fb-2"))
    publish_with(harness, b"not json at all", correlation_id="corr-3")
    publish_with(harness, msg(email="not-an-address", feedback_id="fb-4"), correlation_id="corr-4")
    publish_with(harness, msg(email="not-an-address", feedback_id="fb-5"))
    publish_with(harness, msg(email="c@example.com"), correlation_id="corr-6")
    publish_with(harness, msg(email="d@example.com"))
    harness.run()
    answered = [(props.correlation_id, orjson.loads(body)) for props, body in harness.result_messages()]
    assert [(corr, r["feedback_id"], r["error"]) for corr, r in answered] == [
        ("corr-1", "fb-1", 0),
        ("fb-2", "fb-2", 0),
        ("corr-3", "", 400),
        ("corr-4", "fb-4", 400),
        ("fb-5", "fb-5", 400),
        ("corr-6", "", 0),
        (None, "", 0),
    ]


def test_a_result_echoes_the_feedback_id_verbatim(harness: Harness) -> None:
    """The feedback_id comes back exactly as sent: spaces, case and non-ASCII kept."""
    feedback_ids = [" Mixed Case ", "ключ-📦", "x" * 255, ""]
    results = harness.import_(*(
        msg(email=f"f{i}@example.com", feedback_id=fid) for i, fid in enumerate(feedback_ids)
    ))
    assert [r["feedback_id"] for r in results] == feedback_ids
    assert [r["error"] for r in results] == [0, 0, 0, 0]
