"""The message contract (SPEC §2, §5): every bad message gets one result naming the key at fault.

Most cases here share one worker run: each batch of cases is published to a
database and queues of its own, answered by one in-process worker, and every
parametrized test then reads the result at its case's position (results come
back in publish order). One run for a hundred cases keeps the suite fast; a test
per case keeps each failure readable.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from conftest import ADMIN_DSN, RABBITMQ, RUN_ID, Harness, amqp_connection, msg
from dbimport.config import Settings
from dbimport.store import with_database

INT32_MAX = 2**31 - 1
RESULT_KEYS = {"error", "error_text", "feedback_id", "matching_field", "profile_id"}


# --- a worker run shared by many cases ------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One message and the answer the contract gives it.

    `names` is the key (or data field) the error_text must name; "message" for
    a body that is not a JSON object at all.
    """

    id: str
    message: dict[str, Any] | bytes
    error: int
    names: str = ""
    feedback_id: str | None = None  # the echoed feedback_id, when the case fixes it

    def expected_feedback_id(self) -> str | None:
        """The feedback_id the result echoes: a string whole, a number as its decimal text."""
        if self.feedback_id is not None:
            return self.feedback_id
        if isinstance(self.message, dict) and "feedback_id" in self.message:
            value = self.message["feedback_id"]
            if value is None:
                return ""
            return value if isinstance(value, str) else orjson.dumps(value).decode()
        return None


@dataclass
class Answered:
    """The results of a batch of cases, by case id, and the harness that ran it."""

    harness: Harness
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)


def _create_database(template: str) -> str:
    name = f"dbimport_test_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return name


def _drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _delete_queues(names: Sequence[str]) -> None:
    conn = amqp_connection()
    try:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def answer_cases(
    template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[Sequence[Case]], Answered]]:
    """answer_cases(cases): publish them all to a fresh database and queues, run one
    worker until the queue is empty, and return each case's result."""
    databases: list[str] = []
    queues: list[str] = []
    harnesses: list[Harness] = []

    def answer(cases: Sequence[Case]) -> Answered:
        ids = [case.id for case in cases]
        assert len(set(ids)) == len(ids), "case ids must be unique"
        database = _create_database(template_database)
        databases.append(database)
        prefix = f"test.{RUN_ID}.{uuid.uuid4().hex[:10]}"
        names = {
            "import_queue": f"{prefix}.database_import",
            "result_queue": f"{prefix}.database_import_result",
            "dead_queue": f"{prefix}.database_import.dead",
        }
        queues.extend(names.values())
        settings = Settings(
            postgres_dsn=with_database(ADMIN_DSN, database),
            rabbitmq_host=RABBITMQ["host"],
            rabbitmq_port=RABBITMQ["port"],
            log_path=str(tmp_path_factory.mktemp("log") / "job_server.log"),
            batch_wait_ms=20,
            db_retry_s=10.0,
            connect_timeout_s=5.0,
            **names,
        )
        harness = Harness(settings)
        harnesses.append(harness)
        results = harness.import_(*(case.message for case in cases))
        assert len(results) == len(cases), f"{len(cases)} messages got {len(results)} results"
        answered = Answered(harness)
        for case, result in zip(cases, results):
            # Accepted messages prove the results came back in publish order.
            if case.error == 0:
                assert result["feedback_id"] == case.expected_feedback_id(), (
                    f"results are out of publish order at case {case.id}: {result}"
                )
            answered.by_id[case.id] = result
        return answered

    yield answer
    for harness in harnesses:
        harness.close()
    _delete_queues(queues)
    for database in databases:
        _drop_database(database)


def names_key(text: str, key: str) -> bool:
    """Whether `text` names `key` as a whole key (not as part of a longer name)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text) is not None


def assert_answer(result: dict[str, Any], case: Case) -> None:
    assert set(result) == RESULT_KEYS, result
    assert result["error"] == case.error, result
    if case.error:
        assert result["profile_id"] == "", result
        assert result["error_text"], result
        assert "\n" not in result["error_text"], result
        if case.names:
            assert names_key(result["error_text"], case.names), (
                f"error_text does not name {case.names!r}: {result['error_text']!r}"
            )
    else:
        assert result["error_text"] == "", result
        assert re.fullmatch(r"[0-9a-f]{24}", result["profile_id"]), result


# --- the cases ------------------------------------------------------------------------


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


# --- the tests ------------------------------------------------------------------------


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


# --- tenancy ----------------------------------------------------------------------


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
    Case("subscription-to-an-unlinked-resource",
         msg(email="t10@example.com", feedback_id="t10", data={"subscriptions": [
             {"resource_id": 26, "channel": "email", "email": "t10@example.com"}]}),
         403, "data.subscriptions[0].resource_id"),
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


# --- size -------------------------------------------------------------------------


def padded(limit: int, fid: str, extra: int) -> bytes:
    """A valid message of exactly `limit + extra` bytes."""
    message = msg(email=f"{fid}@example.com", feedback_id=fid, data={"_fname": ""})
    size = len(orjson.dumps(message))
    message["data"]["_fname"] = "x" * (limit + extra - size)
    body = orjson.dumps(message)
    assert len(body) == limit + extra
    return body


def test_a_message_over_the_size_limit_gets_413(harness: Harness) -> None:
    """Given IMPORT_MAX_MESSAGE_BYTES = 300, a body of 300 bytes is imported, one of
    301 gets 413 and writes nothing, and the next message is handled normally."""
    limit = 300
    harness.publish(
        padded(limit, "at-limit", 0),
        padded(limit, "over-limit", 1),
        msg(email="after@example.com", feedback_id="after"),
    )
    harness.run(settings=harness.settings.replace(max_message_bytes=limit))
    at_limit, over, after = harness.results()
    assert (at_limit["error"], at_limit["feedback_id"]) == (0, "at-limit")
    assert over["error"] == 413, over
    assert over["feedback_id"] == "over-limit", "found by reading the start of the body"
    assert over["profile_id"] == ""
    assert str(limit) in over["error_text"], over
    assert (after["error"], after["feedback_id"]) == (0, "after")
    emails = sorted(email for (email,) in harness.rows("SELECT email FROM profiles"))
    assert emails == ["after@example.com", "at-limit@example.com"]
