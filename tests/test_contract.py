"""The message and result contract: every message gets one result, naming the key at fault.

docs/contract.md, "The message" and "The result":

- The message: most cases share one worker run (`answer_cases` in conftest.py): each
  batch of cases is published to a database and queues of its own, answered by one
  in-process worker, and every parametrized test then reads the result at its case's
  position (results come back in publish order).
- Tenancy: a database or resource that is not the account's is 403, an unknown
  database 404; a subscription in data to an unknown or unlinked resource is 400
  (docs/contract.md, "Tenancy: 403 and 404").
- The result: its keys, its values, and its AMQP properties; a result that cannot be
  built or encoded is that message's 500 and a dead letter, never an outage (no message
  can stall the queue; docs/operations.md, "Poison messages and dead letters").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pika
import pika.exceptions
import pytest

from conftest import PROFILE_ID, RESULT_KEYS, Answered, Case, Harness, assert_answer, msg, names_key
from dbimport.broker import DEAD_REASON_HEADER
from dbimport.broker.connection import translate
from dbimport.config import Settings
from dbimport.plugins import get_plugin_manager
from dbimport.worker import RunLimits, Worker
from faults.plugins import FAULT_MODE, from_environment

INT32_MAX = 2**31 - 1
PERSISTENT = 2
CYRILLIC_255 = "Ж" * 255  # 255 characters, 510 bytes in UTF-8: no AMQP short string


# --- the message: the cases -----------------------------------------------------------------


def bad(case_id: str, names: str, **fields: Any) -> Case:
    """A 400 for a message of account 1 / db 1 with `fields` on top."""
    message = msg(email=f"{case_id}@example.com", feedback_id=case_id)
    message.update(fields)
    return Case(case_id, message, 400, names)


def without(case_id: str, key: str) -> Case:
    message = msg(email=f"{case_id}@example.com", feedback_id=case_id)
    del message[key]
    return Case(case_id, message, 400, key)


UNPARSEABLE = [
    Case("body-not-json", b"this is not json", 400, "message", feedback_id=""),
    Case("body-not-utf8", b"\xff\xfe", 400, "message", feedback_id=""),
    Case("body-not-utf8-inside", b'{"account_id": 1, "db_id": 1, "data": {"_fname": "\xff"}}', 400, "message",
         feedback_id=""),
    Case("body-latin1-json", '{"account_id":1,"db_id":1,"data":{},"email":"é@x.fr"}'.encode("latin-1"),
         400, "message", feedback_id=""),
    Case("body-empty", b"", 400, "message", feedback_id=""),
    Case("body-whitespace", b" \n\t ", 400, "message", feedback_id=""),
    Case("body-json-array", b'[{"account_id": 1, "db_id": 1, "data": {}, "feedback_id": "in-array"}]',
         400, "message", feedback_id=""),
    Case("body-json-string", b'"a string"', 400, "message", feedback_id=""),
    Case("body-json-number", b"42", 400, "message", feedback_id=""),
    Case("body-json-null", b"null", 400, "message", feedback_id=""),
    Case("body-json-true", b"true", 400, "message", feedback_id=""),
]

BAD_IDS: list[tuple[str, Any]] = [
    ("string", "1"),
    ("bool", True),
    ("float", 1.5),
    ("zero", 0),
    ("negative", -1),
    ("over-int32", INT32_MAX + 1),
    ("null", None),
    ("object", {"id": 1}),
]

def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


MISTYPED = [
    *(bad(f"{key}-{label}", key, **{key: value}) for key in ("account_id", "db_id") for label, value in BAD_IDS),
    bad("resource_id-string", "resource_id", resource_id="24"),
    bad("resource_id-zero", "resource_id", resource_id=0),
    *(bad(f"data-{label}", "data", data=value)
      for label, value in (("list", []), ("string", "x"), ("number", 1), ("null", None))),
    bad("feedback_id-number", "feedback_id", feedback_id=5),
    bad("feedback_id-null", "feedback_id", feedback_id=None),
    bad("feedback_id-256-chars", "feedback_id", feedback_id="f" * 256),
    *(bad(f"{key}-{label}", key, **{key: value})
      for key in ("update_only", "skip_triggers")
      for label, value in (("string", "true"), ("int", 1), ("null", None))),
    bad("matching-number", "matching", matching=1),
    bad("matching-list", "matching", matching=["email"]),
    bad("matching-null", "matching", matching=None),
    bad("matching-unknown", "matching", matching="telepathy"),
    bad("matching-empty", "matching", matching=""),
    # PostgreSQL stores no NUL character in text: refused up front, naming the key.
    bad("nul-in-email", "email", email="nul\u0000@example.com"),
    bad("nul-in-field", "data._fname", data={"_fname": "a\u0000b"}),
    bad("nul-in-field-name", "data", data={"a\u0000b": 1}),
    bad("nested-too-deep", "data.prefs", data={"prefs": nested(40)}),
]

MISSING = [
    without("missing-account_id", "account_id"),
    without("missing-db_id", "db_id"),
    without("missing-data", "data"),
    without("missing-email", "email"),
    Case("missing-email-email_profile", msg(matching="email_profile", feedback_id="missing-email-email_profile"),
         400, "email"),
    Case("missing-profile_id", msg(matching="profile_id", email="has@example.com", feedback_id="missing-profile_id"),
         400, "profile_id"),
]

BAD_EMAILS: list[tuple[str, Any]] = [
    ("number", 5),
    ("null", None),
    ("empty", ""),
    ("spaces", "   "),
    ("no-at", "john.example.com"),
    ("no-domain-dot", "john@example"),
    ("two-ats", "john@@example.com"),
    ("inner-space", "jo hn@example.com"),
    ("no-local-part", "@example.com"),
]

MALFORMED_EMAILS = [
    Case(f"email-{mode}-{label}", msg(matching=mode, email=value, feedback_id=f"email-{mode}-{label}"), 400, "email")
    for mode in ("email", "email_profile")
    for label, value in BAD_EMAILS
]

MALFORMED_PROFILE_IDS = [
    Case(f"profile_id-{label}", msg(matching="profile_id", profile_id=value, feedback_id=f"profile_id-{label}"),
         400, "profile_id")
    for label, value in (
        ("number", 123456789012),
        ("empty", ""),
        ("short", "0" * 23),
        ("long", "0" * 25),
        ("not-hex", "g" * 24),
        ("uuid", "5f4fa1a5-ce94-4866-5fef-548e"),
    )
]

ACCEPTED = [
    Case("unknown-top-level-keys", msg(email="extra@example.com", feedback_id="unknown-top-level-keys",
                                       source="crm", nested={"a": [1, 2]}, version=3), 0),
    Case("all-optional-keys", msg(email="opts@example.com", feedback_id="all-optional-keys", matching="email",
                                  update_only=False, skip_triggers=True, resource_id=24), 0),
    Case("feedback_id-255-chars", msg(email="long-fb@example.com", feedback_id="f" * 255), 0),
    Case("ids-at-int32-max-unknown-db", msg(email="max@example.com", db_id=INT32_MAX, feedback_id="max-db"),
         404, "db_id"),
]

# Not JSON, but its start holds a top-level feedback_id: that is echoed (as for a 413).
TRUNCATED = [
    Case("body-truncated-object", b'{"feedback_id": "cut", "account_id": 1,', 400, "message", feedback_id="cut"),
    Case("body-truncated-nested-only", b'{"data": {"feedback_id": "inner"}, "account_id": 1,', 400, "message",
         feedback_id=""),
]
WITH_BOM = [
    Case("body-with-bom", b"\xef\xbb\xbf" + orjson.dumps(msg(email="bom@example.com", feedback_id="bom")), 0,
         feedback_id="bom"),
]

CASES = [*UNPARSEABLE, *TRUNCATED, *WITH_BOM, *MISTYPED, *MISSING, *MALFORMED_EMAILS, *MALFORMED_PROFILE_IDS,
         *ACCEPTED]


def follower(case: Case) -> Case:
    """A valid message published right after `case`: it must be handled normally."""
    fid = f"after-{case.id}"
    return Case(fid, msg(email=f"{fid}@example.com", feedback_id=fid, data={"_fname": "Next"}), 0)


@pytest.fixture(scope="module")
def answered(answer_cases: Callable[[Sequence[Case]], Answered]) -> Answered:
    return answer_cases([item for case in CASES for item in (case, follower(case))])


# --- the message: each case's answer --------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_message_gets_the_contract_answer(answered: Answered, case: Case) -> None:
    """Given one message, when the worker handles it, then its single result has the
    contract's code, and an error_text naming the key at fault."""
    assert_answer(answered.by_id[case.id], case)


ECHOING = [c for c in CASES if c.expected_feedback_id() is not None]


@pytest.mark.parametrize("case", ECHOING, ids=lambda c: c.id)
def test_a_body_gets_its_feedback_id_back_even_when_refused(answered: Answered, case: Case) -> None:
    """Given a body whose top level holds a feedback_id, the result echoes it, whatever else
    is wrong with the message: a string whole (also over 255 characters), a number as its
    decimal text."""
    assert answered.by_id[case.id]["feedback_id"] == case.expected_feedback_id()


@pytest.mark.parametrize("case", UNPARSEABLE, ids=lambda c: c.id)
def test_an_unparseable_body_is_answered_with_an_empty_feedback_id(answered: Answered, case: Case) -> None:
    result = answered.by_id[case.id]
    assert result["feedback_id"] == ""
    assert result["matching_field"] == ""


def test_a_body_that_is_not_utf8_is_refused_saying_so_and_where(answered: Answered) -> None:
    assert answered.by_id["body-not-utf8"]["error_text"].startswith("message is not valid UTF-8: byte 0xff at byte 0")
    inside = answered.by_id["body-not-utf8-inside"]["error_text"]
    assert inside.startswith("message is not valid UTF-8: byte 0xff at byte 50"), inside


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_message_after_a_bad_one_is_handled_normally(answered: Answered, case: Case) -> None:
    after = follower(case)
    assert_answer(answered.by_id[after.id], after)


def test_a_bad_message_writes_nothing(answered: Answered) -> None:
    """Only the valid messages left profiles and events behind."""
    h = answered.harness
    written = {email for (email,) in h.rows("SELECT email FROM profiles")}
    valid = {c.message["email"] for c in CASES if not c.error and isinstance(c.message, dict)}
    valid |= {orjson.loads(c.message.removeprefix(b"\xef\xbb\xbf"))["email"] for c in WITH_BOM}
    followers = {follower(c).message["email"] for c in CASES}
    assert written == valid | followers
    events = {fid for (fid,) in h.rows("SELECT DISTINCT feedback_id FROM events")}
    # skip_triggers=true records no event.
    assert events == {c.expected_feedback_id() for c in CASES if not c.error and c.id != "all-optional-keys"} | {
        follower(c).id for c in CASES
    }


def test_an_unknown_mode_is_answered_with_the_known_ones(answered: Answered) -> None:
    text = answered.by_id["matching-unknown"]["error_text"]
    assert "telepathy" in text
    for mode in ("email", "email_profile", "profile_id"):
        assert names_key(text, mode), text


# --- tenancy: 403 and 404 ------------------------------------------------------------------


TENANCY = [
    Case("db-of-another-account", msg(account_id=2, db_id=1, email="t1@example.com", feedback_id="t1"), 403, "db_id"),
    Case("other-account-db", msg(account_id=1, db_id=3, email="t2@example.com", feedback_id="t2"), 403, "db_id"),
    Case("unknown-account", msg(account_id=999, db_id=1, email="t3@example.com", feedback_id="t3"), 403, "db_id"),
    Case("unknown-db", msg(account_id=1, db_id=999, email="t4@example.com", feedback_id="t4"), 404, "db_id"),
    Case("unknown-db-unknown-account", msg(account_id=999, db_id=998, email="t5@example.com", feedback_id="t5"),
         404, "db_id"),
    Case("resource-of-another-account", msg(resource_id=30, email="t6@example.com", feedback_id="t6"),
         403, "resource_id"),
    Case("resource-not-linked", msg(resource_id=26, email="t7@example.com", feedback_id="t7"), 403, "resource_id"),
    Case("subscription-to-another-accounts-resource",
         msg(email="t9@example.com", feedback_id="t9", data={"subscriptions": [
             {"resource_id": 30, "channel": "email", "email": "t9@example.com"}]}),
         403, "data.subscriptions[0].resource_id"),
    # A subscription in data is a value like any other: an unlinked or unknown resource is 400.
    Case("subscription-to-an-unlinked-resource",
         msg(email="t10@example.com", feedback_id="t10", data={"subscriptions": [
             {"resource_id": 26, "channel": "email", "email": "t10@example.com"}]}),
         400, "data.subscriptions[0].resource_id"),
    Case("subscription-to-an-unknown-resource",
         msg(email="t11@example.com", feedback_id="t11", data={"subscriptions": [
             {"resource_id": 99, "channel": "email", "email": "t11@example.com"}]}),
         400, "data.subscriptions[0].resource_id"),
    Case("own-db-3", msg(account_id=2, db_id=3, email="t8@example.com", feedback_id="t8"), 0),
]


def test_tenancy_errors_are_answered_and_write_nothing(harness: Harness) -> None:
    """Given databases and resources of two accounts (account 2 owns db 3), when a
    message names a database or resource that is not its account's, then it gets
    403 (404 for an unknown database), and nothing is written anywhere."""
    results = harness.import_(*(case.message for case in TENANCY))
    assert len(results) == len(TENANCY)
    for case, result in zip(TENANCY, results):
        assert result["feedback_id"] == case.expected_feedback_id()
        assert_answer(result, case)
    assert harness.rows("SELECT db_id, email FROM profiles") == [(3, "t8@example.com")]
    assert harness.rows("SELECT DISTINCT db_id, feedback_id FROM events") == [(3, "t8")]


# --- the result: its keys and values -----------------------------------------------------


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


# --- the result's AMQP properties; a result that cannot be built or encoded ------------------


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
