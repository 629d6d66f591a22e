"""Fuzzing the worker: whatever body arrives, it gets one contract answer, and the worker goes on.

Each test draws lists of hostile bodies with hypothesis, publishes a whole list,
runs the real in-process worker once until the queue is empty, and checks:

- every body got exactly one result (matched by the AMQP correlation_id the test
  gave it), with a code of docs/contract.md ("Error codes") other than 500 and the
  result's shape;
- a body that is not a JSON object got 400 (413 over the size limit);
- the worker returned by itself, answered as many messages as were published,
  requeued and buried none, and logged no error and no traceback;
- and, after all examples, the store still imports a normal message.

Shrinking is off: every example is a worker run, and a failure names the bodies
at fault (truncated) instead.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import random
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson
import pika
import pytest
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from conftest import BUILT_IN_MODES, RESULT_KEYS, Harness, msg
from dbimport.message import base_schema, compose
from dbimport.plugins import Registry, get_plugin_manager

CONTRACT_CODES = {0, 400, 403, 404, 409, 413}
MAX_MESSAGE_BYTES = 1024 * 1024
# A run that outlives this has stalled on some body: fail rather than hang the suite.
RUN_GUARD_S = 15.0
# A store error that is misread as an outage is retried only this long per batch.
DB_RETRY_S = 1.0
EXAMPLES = 20

FUZZ = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

SYSTEM_FIELDS = (
    "_fname", "_lname", "_bdate", "_sex", "_regdate", "_regip", "_ip", "_city", "_country",
    "_region", "_postal_code", "_tz", "_vendor", "_regcity", "_regcountry", "_regurl",
    "_browser", "_os", "_status",
)
DB1_FIELDS = ("CRM_ID", "score", "nickname", "vip", "since", "tier", "last_ip", "interests", "prefs", "orders")
TOP_KEYS = (
    "account_id", "db_id", "data", "feedback_id", "skip_triggers", "update_only", "matching",
    "email", "phone", "profile_id", "field_name", "field_value", "resource_id", "provider",
    "subscription_id",
)
# (account_id, db_id) pairs of the seed: own, another of the account, another account's.
TENANTS = [(1, 1), (1, 1), (1, 1), (1, 2), (2, 3), (1, 3), (2, 1), (1, 999)]


# --- the oracle -------------------------------------------------------------------------------


def preview(body: bytes, size: int = 160) -> str:
    return repr(bytes(body[:size])) + (f"... ({len(body)} bytes)" if len(body) > size else "")


class Body(bytes):
    """A message body whose repr is short: hypothesis prints failing examples."""

    def __repr__(self) -> str:
        return preview(self)


def unparseable_code(body: bytes) -> int | None:
    """The code a body must get before any validation: 413, 400, or None (a JSON object).

    A UTF-8 byte order mark before the JSON is allowed."""
    if len(body) > MAX_MESSAGE_BYTES:
        return 413
    body = body.removeprefix(b"\xef\xbb\xbf")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 400
    return None if isinstance(value, dict) else 400


def problem_records(records: Sequence[logging.LogRecord]) -> list[str]:
    """Log lines that show the worker in trouble: errors, tracebacks, outages, reconnects.

    Error results are logged as warnings by `dbimport.results`: those are expected.
    """
    problems = []
    for record in records:
        ours = record.name.startswith(("dbimport", "psycopg"))
        if record.exc_info or record.levelno >= logging.ERROR or (
            ours and record.levelno >= logging.WARNING and record.name != "dbimport.results"
        ):
            problems.append(f"{record.levelname} {record.name}: {record.getMessage()[:300]}")
    return problems


class Fuzzer:
    """Publishes a list of bodies, runs the worker once, and checks every answer."""

    def __init__(self, harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
        self.harness = harness
        self.caplog = caplog
        self.settings = harness.settings.replace(db_retry_s=DB_RETRY_S, max_message_bytes=MAX_MESSAGE_BYTES)
        self.codes: Counter[int] = Counter()
        self.bodies = 0

    def answer(self, drawn: Sequence[bytes]) -> None:
        h = self.harness
        bodies = [bytes(body) for body in drawn]
        ids = [uuid.uuid4().hex for _ in bodies]
        for cid, body in zip(ids, bodies):
            h.channel.basic_publish(
                "", h.settings.import_queue, body, pika.BasicProperties(delivery_mode=2, correlation_id=cid)
            )
        stats = h.run(settings=self.settings, max_runtime_s=RUN_GUARD_S)
        answers: dict[str, list[dict[str, Any]]] = {}
        for props, raw in h.result_messages():
            answers.setdefault(str(props.correlation_id), []).append(orjson.loads(raw))

        unanswered = [preview(b) for cid, b in zip(ids, bodies) if cid not in answers]
        assert not unanswered, f"{len(unanswered)} of {len(bodies)} bodies got no result, e.g. {unanswered[:3]}"
        twice = [preview(b) for cid, b in zip(ids, bodies) if len(answers[cid]) > 1]
        assert not twice, f"bodies answered more than once: {twice[:3]}"
        assert set(answers) == set(ids), "results for bodies that were never published"

        wrong = []
        for cid, body in zip(ids, bodies):
            result = answers[cid][0]
            self.codes[result["error"]] += 1
            expected = unparseable_code(body)
            if not result_is_well_formed(result) or result["error"] not in CONTRACT_CODES or (
                expected is not None and result["error"] != expected
            ):
                wrong.append(f"{preview(body)} -> {result!r:.400}")
        assert not wrong, f"{len(wrong)} answers break the contract:\n" + "\n".join(wrong[:5])

        assert stats.handled == len(bodies), stats
        assert (stats.requeued, stats.dead) == (0, 0), stats
        assert h.queue_depth(h.settings.import_queue) == 0
        assert h.queue_depth(h.settings.dead_queue) == 0
        problems = problem_records(self.caplog.records)
        assert not problems, "the worker logged trouble:\n" + "\n".join(problems[:5])
        self.caplog.clear()
        self.bodies += len(bodies)

    def store_still_works(self) -> None:
        """A normal message after the fuzzing is imported, and its profile reads back."""
        email = f"after-fuzz-{uuid.uuid4().hex[:8]}@example.com"
        [result] = self.harness.import_(msg(email=email, feedback_id="after-fuzz", data={"_fname": "After"}))
        assert (result["error"], result["feedback_id"]) == (0, "after-fuzz"), result
        rows = self.harness.rows(
            "SELECT email, fields->>'_fname' FROM profiles WHERE db_id = 1 AND profile_id = %s",
            result["profile_id"],
        )
        assert rows == [(email, "After")]


def result_is_well_formed(result: Mapping[str, Any]) -> bool:
    """The result of docs/contract.md ("The result"): the five keys; an error has no profile
    and one line of text."""
    if set(result) != RESULT_KEYS or not isinstance(result["error_text"], str):
        return False
    if result["error"] == 0:
        return result["error_text"] == "" and re.fullmatch(r"[0-9a-f]{24}", result["profile_id"]) is not None
    text = result["error_text"]
    return result["profile_id"] == "" and bool(text) and "\n" not in text and "\r" not in text


@pytest.fixture
def fuzzer(harness: Harness, caplog: pytest.LogCaptureFixture) -> Iterator[Fuzzer]:
    caplog.set_level(logging.WARNING)
    yield Fuzzer(harness, caplog)


def fuzz(fuzzer: Fuzzer, bodies: st.SearchStrategy[list[bytes]], explicit: Sequence[list[bytes]] = ()) -> None:
    """Run `explicit` lists, then generated ones; then check that the store still works."""

    def answer(drawn: list[bytes]) -> None:
        fuzzer.answer(drawn)

    examples = FUZZ(given(bodies.map(lambda drawn: [Body(body) for body in drawn]))(answer))
    for case in explicit:
        examples = example([Body(body) for body in case])(examples)
    examples()
    fuzzer.store_still_works()


# --- strategies: values -----------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=24)
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=16)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
EMAILS = st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,6})?@[a-z0-9]{1,10}\.(com|org|ru)", fullmatch=True)
PHONES = st.from_regex(r"\+7[0-9]{10}", fullmatch=True)
PROFILE_IDS = st.from_regex(r"[0-9a-f]{24}", fullmatch=True)
DATE_TIMES = st.datetimes(timezones=st.just(dt.timezone.utc)).map(lambda d: d.isoformat())

GOOD_DATA: dict[str, st.SearchStrategy[Any]] = {
    "CRM_ID": st.integers(-(2**63), 2**63 - 1),
    "score": st.floats(allow_nan=False, allow_infinity=False),
    "nickname": TEXT,
    "vip": st.booleans(),
    "since": st.dates().map(str),
    "tier": st.sampled_from(["gold", "silver"]),
    "last_ip": st.ip_addresses().map(str),
    "interests": st.lists(TEXT, max_size=4),
    "prefs": st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
    "orders": st.lists(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3), max_size=3),
    "_fname": TEXT,
    "_lname": TEXT,
    "_bdate": st.dates().map(str) | DATE_TIMES,
    "_sex": st.sampled_from(["male", "female"]),
    "_regdate": DATE_TIMES,
    "_ip": st.ip_addresses().map(str),
    "_tz": st.sampled_from(["UTC", "Europe/Moscow", "America/New_York"]),
    "_status": st.integers(-(2**63), 2**63 - 1),
    "email": EMAILS,
    "phones": st.lists(PHONES, max_size=3),
    "subscriptions": st.lists(
        st.fixed_dictionaries(
            {"resource_id": st.sampled_from([24, 25]), "channel": st.just("email"), "email": EMAILS},
            optional={
                "status": st.sampled_from(["subscribed", "unsubscribed", "suspended"]),
                "priority": st.integers(-(2**63), 2**63 - 1),
                "cats": st.lists(TEXT, max_size=3),
                "custom_fields": st.fixed_dictionaries(
                    {}, optional={"loyalty_card": TEXT, "level": st.integers(-(2**31), 2**31)}
                ),
            },
        ),
        max_size=2,
    ),
}


@st.composite
def good_data(draw: st.DrawFn) -> dict[str, Any]:
    """A few declared fields with values of their types (drawing all of them would be slow)."""
    names = draw(st.lists(st.sampled_from(sorted(GOOD_DATA)), max_size=4, unique=True))
    return {name: draw(GOOD_DATA[name]) for name in names}

# What one matching key of a mode holds when it is valid.
MODE_KEYS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "email": st.fixed_dictionaries({"email": EMAILS}),
    "email_profile": st.fixed_dictionaries({"email": EMAILS}),
    "email_sub": st.fixed_dictionaries({"email": EMAILS}),
    "phone": st.fixed_dictionaries({"phone": PHONES}),
    "phone_sub": st.fixed_dictionaries({"phone": PHONES}),
    "profile_id": st.fixed_dictionaries({"profile_id": PROFILE_IDS}),
    "push_sub": st.fixed_dictionaries({"provider": st.sampled_from(["android-firebase", "apns"]),
                                       "subscription_id": st.from_regex(r"[A-Za-z0-9:_-]{1,64}", fullmatch=True)}),
    "custom": st.one_of(
        st.fixed_dictionaries({"field_name": st.just("CRM_ID"), "field_value": st.integers(1, 10**6)}),
        st.fixed_dictionaries({"field_name": st.just("nickname"), "field_value": TEXT}),
        st.fixed_dictionaries({"field_name": st.just("interests"), "field_value": st.just("a, b")}),
    ),
    "custom_sub": st.fixed_dictionaries({"field_name": st.just("loyalty_card"), "field_value": TEXT}),
    "email_phone": st.fixed_dictionaries({}, optional={"email": EMAILS, "phone": PHONES}),
    "email_phone_sub": st.fixed_dictionaries({"email": EMAILS}, optional={"phone": PHONES}),
}


def _composed_schemas() -> dict[str, dict[str, Any]]:
    registry = Registry(get_plugin_manager())
    return {mode: compose(base_schema(), registry[mode].schema) for mode in BUILT_IN_MODES}


COMPOSED = _composed_schemas()


def _properties(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Every property schema of a (composed) message schema."""
    props: dict[str, Any] = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        props.update(_properties(part))
    return props


# Each envelope key's strategy, drawn from its schema by hypothesis-jsonschema. Only
# the leaves: its object generator does not run on this hypothesis version.
ENVELOPE_KEYS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    mode: {key: from_schema(schema) for key, schema in sorted(_properties(COMPOSED[mode]).items()) if key != "data"}
    for mode in BUILT_IN_MODES
}


@st.composite
def envelope(draw: st.DrawFn, mode: str) -> dict[str, Any]:
    """A schema-valid message of `mode`: envelope keys drawn from the message schema,
    then the tenancy and match keys made to fit the seed, and data from the declared fields."""
    keys = ENVELOPE_KEYS[mode]
    message: dict[str, Any] = {
        key: draw(keys[key]) for key in draw(st.lists(st.sampled_from(sorted(keys)), max_size=4, unique=True))
    }
    message["account_id"], message["db_id"] = draw(st.sampled_from(TENANTS))
    message["matching"] = mode
    message.update(draw(MODE_KEYS[mode]))
    message["data"] = draw(good_data())
    resource = draw(st.sampled_from([None, None, 24, 25, 26, 30]))
    message.pop("resource_id", None)
    if resource is not None:
        message["resource_id"] = resource
    return message


ANY_ENVELOPE = st.one_of([envelope(mode) for mode in BUILT_IN_MODES])


# --- strategies: bodies -----------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def corrupted_message(draw: st.DrawFn) -> bytes:
    """A valid message of any mode with at most one field corrupted: replaced by any
    JSON value, deleted, or (for a data field) given a value of another type."""
    message = draw(ANY_ENVELOPE)
    how = draw(st.sampled_from(["none", "top", "top", "drop", "data", "data"]))
    if how == "top":
        message[draw(st.sampled_from(sorted(message)))] = draw(JSON_VALUES)
    elif how == "drop":
        del message[draw(st.sampled_from(sorted(message)))]
    elif how == "data":
        name = draw(st.sampled_from([*GOOD_DATA, *SYSTEM_FIELDS, "_unknown", ""]) | st.text(max_size=12))
        message["data"][name] = draw(JSON_VALUES)
    return dumps(message)


SUBSCRIPTION_KEYS = (
    "email", "phone", "provider", "subscription_id", "address", "status", "priority", "custom_fields", "cats",
    "unknown",
)


@st.composite
def any_typed(draw: st.DrawFn, names: Sequence[str], max_size: int) -> dict[str, Any]:
    """A few of `names`, each holding any JSON value."""
    chosen = draw(st.lists(st.sampled_from(names), max_size=max_size, unique=True))
    return {name: draw(JSON_VALUES) for name in chosen}


@st.composite
def subscription_shaped(draw: st.DrawFn) -> dict[str, Any]:
    subscription = draw(any_typed(SUBSCRIPTION_KEYS, 3))
    subscription["resource_id"] = draw(st.sampled_from([24, 25, 26, 30]) | JSON_VALUES)
    subscription["channel"] = draw(st.sampled_from(["email", "sms", "push", "web"]) | JSON_VALUES)
    return subscription


@st.composite
def wrongly_typed_message(draw: st.DrawFn) -> bytes:
    """Message-shaped objects whose keys, data fields and subscriptions hold any JSON type."""
    message = draw(any_typed(TOP_KEYS, 4))
    message.setdefault("account_id", 1)
    message.setdefault("db_id", 1)
    data = draw(any_typed((*DB1_FIELDS, *SYSTEM_FIELDS, "email", "phones"), 3))
    if draw(st.booleans()):
        data["subscriptions"] = draw(st.lists(subscription_shaped(), max_size=2) | JSON_VALUES)
    message["data"] = draw(st.just(data) | JSON_VALUES)
    return dumps(message)


# A template message per place a raw value can go; SLOT is replaced by raw JSON text.
SLOT = "\u2063slot\u2063"
PLACES: dict[str, Callable[[], dict[str, Any]]] = {
    "account_id": lambda: msg(account_id=SLOT, email="p@example.com"),
    "db_id": lambda: msg(db_id=SLOT, email="p@example.com"),
    "resource_id": lambda: msg(resource_id=SLOT, email="p@example.com"),
    "feedback_id": lambda: msg(feedback_id=SLOT, email="p@example.com"),
    "matching": lambda: msg(matching=SLOT, email="p@example.com"),
    "email": lambda: msg(email=SLOT),
    "phone": lambda: msg(matching="phone", phone=SLOT),
    "profile_id": lambda: msg(matching="profile_id", profile_id=SLOT),
    "field_value": lambda: msg(matching="custom", field_name="nickname", field_value=SLOT),
    "field_name": lambda: msg(matching="custom", field_name=SLOT, field_value="1"),
    "push subscription_id": lambda: msg(matching="push_sub", provider="apns", subscription_id=SLOT, resource_id=24),
    "push provider": lambda: msg(matching="push_sub", provider=SLOT, subscription_id="device-1", resource_id=24),
    "unknown top-level key": lambda: msg(email="p@example.com", junk=SLOT),
    **{f"data.{name}": (lambda name=name: msg(email="p@example.com", data={name: SLOT}))
       for name in ("_fname", "_status", "_bdate", "nickname", "CRM_ID", "score", "prefs", "interests", "orders",
                    "phones", "email")},
    "data key": lambda: msg(email="p@example.com", data={"nickname": "x", "key": SLOT}),
    "subscription address": lambda: msg(email="p@example.com", data={"subscriptions": [
        {"resource_id": 24, "channel": "web", "address": SLOT}]}),
    "subscription email": lambda: msg(email="p@example.com", data={"subscriptions": [
        {"resource_id": 24, "channel": "email", "email": SLOT}]}),
    "subscription priority": lambda: msg(email="p@example.com", data={"subscriptions": [
        {"resource_id": 24, "channel": "email", "email": "p@example.com", "priority": SLOT}]}),
    "subscription custom field": lambda: msg(email="p@example.com", data={"subscriptions": [
        {"resource_id": 24, "channel": "email", "email": "p@example.com", "custom_fields": {"loyalty_card": SLOT}}]}),
}


def placed(place: str, raw: bytes) -> bytes:
    """The template of `place` with its slot replaced by `raw` JSON text."""
    template = dumps(PLACES[place]())
    slot = dumps(SLOT)
    if place == "data key":
        # The slot is a key here: `"key": SLOT` becomes `RAW: 1`.
        return template.replace(b'"key": ' + slot, raw + b": 1")
    return template.replace(slot, raw)


ALPHABETS = {
    "ascii": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "two-byte": "éßøдж",
    "four-byte": "\U0001F600\U0001F680\U0001F4A9\U0001F9E0\U00010348\U00020000\U00020001\U0002A000",
    "separators": " ,;|\u2028\u2029\t",
}


# Places that hold strings; identity values among them end up in unique indexes.
STRING_PLACES = (
    "feedback_id", "matching", "email", "phone", "profile_id", "field_value", "field_name", "push subscription_id",
    "push provider", "unknown top-level key", "data._fname", "data.nickname", "data.interests", "data key",
    "subscription address", "subscription email", "subscription custom field",
)
# Lengths at the limits: 255 (feedback_id), 1024 and 4096 (push and subscription ids),
# the btree entry limit (about 2700 bytes), 65536 (IMPORT_MAX_STRING_CHARS), 1 MiB.
STRING_LENGTHS = (
    st.sampled_from([255, 256, 1024, 1025, 2000, 2800, 3000, 4000, 4096, 4097, 65536, 65537])
    | st.integers(0, 5000)
    | st.integers(0, 1_200_000)
)


# CJK extension B: four UTF-8 bytes each, and a random run of them does not compress.
WIDE_CHARACTERS = "".join(chr(c) for c in range(0x20000, 0x2A6DF))


def noise(length: int, alphabet: str, *, seed: int) -> str:
    """`length` pseudo-random characters of `alphabet`: text PostgreSQL cannot compress."""
    return "".join(random.Random(seed).choices(alphabet, k=length))


@st.composite
def huge_string(draw: st.DrawFn) -> bytes:
    """A string of up to 1.2 MiB, repeated or pseudo-random (so PostgreSQL cannot compress it)."""
    length = draw(STRING_LENGTHS)
    alphabet = ALPHABETS[draw(st.sampled_from(sorted(ALPHABETS)))]
    if draw(st.booleans()):
        text = alphabet[0] * length
    else:
        text = noise(length, alphabet, seed=draw(st.integers(0, 2**32)))
    return placed(draw(st.sampled_from(STRING_PLACES)), dumps(text))


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    """Arrays or objects nested from a few to hundreds of thousands of levels."""
    depth = draw(st.sampled_from([31, 32, 33, 1023, 1024, 1025, 5000]) | st.integers(2, 300_000))
    kind = draw(st.sampled_from(["array", "object", "mixed"]))
    if kind == "array":
        raw = b"[" * depth + b"]" * depth
    elif kind == "object":
        raw = b'{"a":' * depth + b"1" + b"}" * depth
    else:
        raw = b'{"a":[' * (depth // 2) + b"0" + b"]}" * (depth // 2)
    where = draw(st.sampled_from(["body", "data.prefs", "data.orders", "unknown top-level key", "feedback_id"]))
    return raw if where == "body" else placed(where, raw)


NUMBER_LITERALS = [
    b"1e400", b"-1e400", b"1e-400", b"-0", b"-0.0", b"0.0", b"1.5", b"1E2", b"18446744073709551615",
    b"18446744073709551616", b"9223372036854775807", b"9223372036854775808", b"-9223372036854775809",
    b"2147483647", b"2147483648", b"123456789012345678901234567890", b"1.7976931348623157e308",
    b"4.9e-324", b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"0x10", b"01", b"+1",
    b"1.", b".5", b"1e", b"--1", b"1_000",
]


@st.composite
def huge_number(draw: st.DrawFn) -> bytes:
    """Numbers beyond every range, NaN and Infinity (as raw JSON text), and broken numbers."""
    raw = draw(
        st.sampled_from(NUMBER_LITERALS)
        | st.integers(1, 5000).map(lambda k: b"1" + b"0" * k)
        | st.integers(-100_000, 100_000).map(lambda e: b"1e%d" % e)
    )
    return placed(draw(st.sampled_from(sorted(PLACES))), raw)


STRING_ESCAPES = [
    b'"\\u0000"', b'"a\\u0000b"', b'"\\ud800"', b'"\\udfff"', b'"\\ud800\\ud800"', b'"\\udbff\\udfff"',
    b'"\\ud800x"', b'"\x00"', b'"a\x00b"', b'"\x1f"', b'"\xed\xa0\x80"', b'"\xff"', b'"\xc0\xaf"',
    b'"\xf4\x90\x80\x80"', b'"\x80"', b'"\\u00"', b'"\\x41"', b'"\\"', b'"\xe2\x80\xa8"', b'"\xef\xbb\xbf"',
]
BAD_BYTES = [b"\x00", b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xef\xbb\xbf"]


@st.composite
def bad_encoding(draw: st.DrawFn) -> bytes:
    """Invalid UTF-8, NUL characters (raw and escaped), lone surrogates, truncated JSON."""
    valid = dumps(msg(email="enc@example.com", feedback_id="enc", data={"_fname": "Zoë", "nickname": "n"}))
    how = draw(st.sampled_from(["escape", "insert", "truncate", "prefix"]))
    if how == "escape":
        return placed(draw(st.sampled_from(sorted(PLACES))), draw(st.sampled_from(STRING_ESCAPES)))
    if how == "insert":
        at = draw(st.integers(0, len(valid)))
        junk = draw(st.sampled_from(BAD_BYTES) | st.binary(min_size=1, max_size=4))
        return valid[:at] + junk + valid[at:]
    if how == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    return draw(st.sampled_from(BAD_BYTES)) + valid


def random_json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- the tests --------------------------------------------------------------------------------


def test_random_json_is_answered_and_the_worker_goes_on(fuzzer: Fuzzer) -> None:
    """Given bodies of random JSON (any type, objects with any keys), when the worker
    runs, then each gets one 400 or other contract answer, and nothing breaks."""
    fuzz(fuzzer, st.lists(JSON_VALUES.map(random_json_body), min_size=20, max_size=80))
    assert fuzzer.bodies >= 400
    assert fuzzer.codes[400] > 0


def test_valid_messages_with_one_field_corrupted_get_contract_answers(fuzzer: Fuzzer) -> None:
    """Given schema-valid messages of every mode (envelope keys drawn from the message
    schema), some with one field corrupted or deleted, then every answer is a contract
    code, and the uncorrupted ones reach the store (some are imported)."""
    fuzz(fuzzer, st.lists(corrupted_message(), min_size=20, max_size=60))
    assert fuzzer.codes[0] > 0, fuzzer.codes
    assert fuzzer.codes[400] > 0, fuzzer.codes


def test_wrong_types_everywhere_get_contract_answers(fuzzer: Fuzzer) -> None:
    """Given message-shaped objects whose every key, data field and subscription key
    may hold any JSON type, then every answer is a contract code."""
    fuzz(fuzzer, st.lists(wrongly_typed_message(), min_size=20, max_size=60))
    assert fuzzer.codes[400] > 0, fuzzer.codes


def test_huge_strings_in_every_place_get_contract_answers(fuzzer: Fuzzer) -> None:
    """Given strings up to 1.2 MiB (repeated or incompressible, 1- to 4-byte characters)
    in every place a string goes, including identity values that end up in unique
    indexes, then every answer is a contract code (413 over the size limit), and
    the worker neither crashes nor stalls."""
    # Beyond the ~2700 bytes of a btree entry, within what the address checks allow.
    at_the_index_limit = [
        placed("subscription address", dumps(noise(3000, ALPHABETS["ascii"], seed=3))),
        placed("push subscription_id", dumps(noise(1024, WIDE_CHARACTERS, seed=5))),
        dumps(msg(email="after-long-ids@example.com")),
    ]
    fuzz(fuzzer, st.lists(huge_string(), min_size=20, max_size=60), explicit=[at_the_index_limit])
    assert fuzzer.codes[0] > 0 and fuzzer.codes[400] > 0 and fuzzer.codes[413] > 0, fuzzer.codes


def test_deep_nesting_and_huge_numbers_get_contract_answers(fuzzer: Fuzzer) -> None:
    """Given nesting up to 300 000 levels in the body, in data and in ignored keys,
    numbers beyond every range, and NaN/Infinity as raw JSON text, then every answer
    is a contract code and the worker neither crashes nor stalls."""
    fuzz(fuzzer, st.lists(deep_nesting() | huge_number(), min_size=20, max_size=60))
    assert fuzzer.codes[400] > 0, fuzzer.codes


def test_bad_encodings_nul_surrogates_and_truncation_get_contract_answers(fuzzer: Fuzzer) -> None:
    """Given invalid UTF-8, raw and escaped NUL characters, lone surrogates, a BOM and
    truncated JSON, in every place, then every answer is a contract code (an
    unparseable body 400) and the store is never handed a NUL or a surrogate."""
    fuzz(fuzzer, st.lists(bad_encoding(), min_size=20, max_size=80))
    assert fuzzer.codes[400] > 0, fuzzer.codes
