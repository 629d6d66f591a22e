"""Profile data (SPEC §4, issue 2 point 5): field types, declarations, and merging writes.

Each field case is one message creating a profile of its own; all cases share
one worker run (see `answer_cases` in test_message_contract), and each test
reads its case's answer and row.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from test_message_contract import Answered, Case, answer_cases, assert_answer  # noqa: F401 (fixture)

from conftest import Harness, msg

ABSENT = object()  # the field is not stored
STORED = object()  # the field is stored, in whatever canonical form


@dataclass(frozen=True)
class FieldCase:
    """data = {field: value} on a new profile; good or bad, and what is stored."""

    field: str
    label: str
    value: Any
    good: bool
    stored: Any = STORED
    db_id: int = 1

    @property
    def id(self) -> str:
        return f"{self.field}-{'ok' if self.good else 'bad'}-{self.label}"

    @property
    def email(self) -> str:
        return f"{self.id.lower()}@example.com"

    def case(self) -> Case:
        message = msg(db_id=self.db_id, email=self.email, feedback_id=self.id, data={self.field: self.value})
        return Case(self.id, message, 0 if self.good else 400, f"data.{self.field}")


def ok(field: str, label: str, value: Any, stored: Any = STORED) -> FieldCase:
    return FieldCase(field, label, value, True, stored)


def no(field: str, label: str, value: Any, db_id: int = 1) -> FieldCase:
    return FieldCase(field, label, value, False, db_id=db_id)


STRING_SYSTEM_FIELDS = [
    "_fname", "_lname", "_city", "_country", "_region", "_postal_code", "_vendor",
    "_regcity", "_regcountry", "_regurl", "_browser", "_os",
]

SYSTEM = [
    *(ok(name, "text", "Some text", "Some text") for name in STRING_SYSTEM_FIELDS),
    *(no(name, "number", 42) for name in STRING_SYSTEM_FIELDS),
    no("_fname", "list", ["John"]),
    no("_city", "object", {"name": "Paris"}),
    ok("_fname", "null", None, ABSENT),
    ok("_bdate", "date", "1990-05-17", "1990-05-17"),
    ok("_bdate", "datetime-utc", "1990-05-17T10:00:00Z"),
    ok("_bdate", "datetime-offset", "1990-05-17T10:00:00+03:00"),
    no("_bdate", "dotted", "17.05.1990"),
    no("_bdate", "feb-30", "1990-02-30"),
    no("_bdate", "number", 19900517),
    no("_bdate", "no-offset", "1990-05-17T10:00"),
    no("_bdate", "empty", ""),
    ok("_regdate", "utc", "2024-05-01T12:00:00Z"),
    ok("_regdate", "fraction-offset", "2024-05-01T12:00:00.123+02:00"),
    no("_regdate", "date-only", "2024-05-01"),
    no("_regdate", "word", "yesterday"),
    no("_regdate", "month-13", "2024-13-01T00:00:00Z"),
    no("_regdate", "epoch", 1714564800),
    *(ok(name, "v4", "192.0.2.1", "192.0.2.1") for name in ("_regip", "_ip")),
    *(ok(name, "v6", "2001:db8::1", "2001:db8::1") for name in ("_regip", "_ip")),
    *(no(name, "octet-999", "999.1.1.1") for name in ("_regip", "_ip")),
    *(no(name, "hostname", "example.com") for name in ("_regip", "_ip")),
    *(no(name, "number", 3232235777) for name in ("_regip", "_ip")),
    ok("_tz", "moscow", "Europe/Moscow", "Europe/Moscow"),
    ok("_tz", "buenos-aires", "America/Argentina/Buenos_Aires", "America/Argentina/Buenos_Aires"),
    no("_tz", "mars", "Mars/Olympus"),
    no("_tz", "offset", "+03:00"),
    no("_tz", "number", 3),
    ok("_sex", "male", "male", "male"),
    ok("_sex", "female", "female", "female"),
    no("_sex", "other", "other"),
    no("_sex", "empty", ""),
    no("_sex", "number", 1),
    ok("_status", "one", 1, 1),
    ok("_status", "zero", 0, 0),
    no("_status", "word", "active"),
    no("_status", "fraction", 1.5),
    no("_status", "bool", True),
]

CONTACTS = [
    ok("email", "spaced-caps", " Valid@Example.COM ", "valid@example.com"),
    no("email", "malformed", "not-an-address"),
    no("email", "empty", ""),
    no("email", "number", 5),
    ok("phones", "list", ["+79000000000", "+7 (900) 000-00-01"], ["+79000000000", "+79000000001"]),
    ok("phones", "empty", [], []),
    no("phones", "too-short", ["123"]),
    no("phones", "letters", ["call me"]),
    no("phones", "number", 5),
    no("phones", "null-item", [None]),
    no("phones", "nested", [["+79000000000"]]),
]

CUSTOM = [
    ok("CRM_ID", "int", 42, 42),
    no("CRM_ID", "word", "abc"),
    no("CRM_ID", "fraction", 1.5),
    no("CRM_ID", "bool", True),
    ok("score", "fraction", 4.5, 4.5),
    ok("score", "int", 3, 3),
    no("score", "word", "high"),
    no("score", "bool", True),
    no("score", "nan", "NaN"),
    ok("nickname", "text", "nick", "nick"),
    no("nickname", "number", 5),
    no("nickname", "object", {"a": 1}),
    ok("vip", "true", True, True),
    ok("vip", "false", False, False),
    no("vip", "word", "maybe"),
    no("vip", "int", 1),
    ok("since", "date", "2020-01-31", "2020-01-31"),
    no("since", "dmy", "31/01/2020"),
    no("since", "feb-30", "2020-02-30"),
    no("since", "number", 20200131),
    ok("tier", "option", "gold", "gold"),
    no("tier", "not-an-option", "bronze"),
    no("tier", "list", ["gold"]),
    ok("last_ip", "v4", "10.0.0.1", "10.0.0.1"),
    ok("last_ip", "v6", "::1", "::1"),
    no("last_ip", "octet-256", "10.0.0.256"),
    no("last_ip", "number", 5),
    ok("interests", "list", ["a", "b"], ["a", "b"]),
    ok("interests", "separated", "a, b|c;d", ["a", "b", "c", "d"]),
    no("interests", "number", 5),
    no("interests", "list-of-numbers", [1]),
    no("interests", "object", {"a": 1}),
    ok("prefs", "object", {"a": 1, "b": {"c": [1]}}, {"a": 1, "b": {"c": [1]}}),
    no("prefs", "list", [1]),
    no("prefs", "string", "x"),
    ok("orders", "objects", [{"id": 1}, {"id": 2}], [{"id": 1}, {"id": 2}]),
    ok("orders", "empty", [], []),
    no("orders", "numbers", [1]),
    no("orders", "object", {"id": 1}),
    no("orders", "mixed", [{"id": 1}, "x"]),
]

UNDECLARED = [
    no("unknown_field", "undeclared", 1),
    no("crm_id", "other-letter-case", 1),
    no("score", "declared-for-another-db", 1.5, db_id=2),
    no("_nickname", "unknown-system-field", "nick"),
    no("_", "bare-underscore", "x"),
]

FIELD_CASES = [*SYSTEM, *CONTACTS, *CUSTOM, *UNDECLARED]
GOOD = [c for c in FIELD_CASES if c.good]
BAD = [c for c in FIELD_CASES if not c.good]
MIXED = Case(
    "mixed-good-and-bad",
    msg(email="mixed@example.com", feedback_id="mixed-good-and-bad",
        data={"_fname": "Ok", "nickname": "ok", "CRM_ID": "not a number", "vip": True}),
    400, "data.CRM_ID",
)


@pytest.fixture(scope="module")
def answered(answer_cases: Callable[[Sequence[Case]], Answered]) -> Answered:
    return answer_cases([*(c.case() for c in FIELD_CASES), MIXED])


def stored_value(harness: Harness, case: FieldCase, profile_id: str) -> Any:
    email, phones, fields = harness.rows(
        "SELECT email, phones, fields FROM profiles WHERE db_id = %s AND profile_id = %s",
        case.db_id, profile_id,
    )[0]
    if case.field == "email":
        return email
    if case.field == "phones":
        return phones
    return fields.get(case.field, ABSENT)


def test_field_case_ids_are_unique() -> None:
    ids = [c.id for c in FIELD_CASES]
    assert len(ids) == len(set(ids))
    emails = [c.email for c in FIELD_CASES]
    assert len(emails) == len(set(emails))


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_a_good_value_is_accepted_and_stored(answered: Answered, case: FieldCase) -> None:
    """Given a value of the field's type, the profile is created and holds it."""
    result = answered.by_id[case.id]
    assert_answer(result, case.case())
    stored = stored_value(answered.harness, case, result["profile_id"])
    if case.stored is STORED:
        assert stored is not ABSENT and stored is not None
    else:
        assert stored == case.stored


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_a_bad_value_gets_400_naming_the_field(answered: Answered, case: FieldCase) -> None:
    """Given a value that does not fit the field (or an undeclared field), the answer
    is 400 with an error_text naming data.<field>, and no profile is created."""
    result = answered.by_id[case.id]
    assert_answer(result, case.case())
    assert result["feedback_id"] == case.id
    assert answered.harness.count("SELECT count(*) FROM profiles WHERE email = %s", case.email) == 0


def test_one_bad_field_refuses_the_whole_message(answered: Answered) -> None:
    assert_answer(answered.by_id[MIXED.id], MIXED)
    assert answered.harness.count("SELECT count(*) FROM profiles WHERE email = 'mixed@example.com'") == 0


def test_only_good_values_created_profiles(answered: Answered) -> None:
    """Every good case created exactly its profile; nothing else was written."""
    assert answered.harness.count("SELECT count(*) FROM profiles") == len(GOOD)
    assert answered.harness.count("SELECT count(*) FROM events") == len(GOOD)


# --- merging ----------------------------------------------------------------------


def test_a_write_merges_into_the_stored_profile_and_null_clears(harness: Harness) -> None:
    """Given a profile with system and custom fields, e-mail and phones: fields in
    data replace their stored values, absent fields stay, null clears a field."""
    created, replaced, cleared = harness.import_(
        msg(email="m@example.com", data={
            "_fname": "Ann", "_lname": "Lee", "CRM_ID": 7, "interests": ["a", "b"],
            "prefs": {"x": 1}, "phones": ["+79000000001"],
        }),
        msg(email="m@example.com", data={
            "_fname": "Anna", "interests": "c", "prefs": {"y": 2}, "phones": ["+79000000002", "+79000000003"],
        }),
        msg(email="M@example.com", data={"CRM_ID": None, "_lname": None, "vip": False}),
    )
    assert [r["error"] for r in (created, replaced, cleared)] == [0, 0, 0]
    assert len({r["profile_id"] for r in (created, replaced, cleared)}) == 1
    assert harness.rows("SELECT email, phones, fields FROM profiles") == [(
        "m@example.com",
        ["+79000000002", "+79000000003"],
        # A value replaces the stored one whole (object and tags included).
        {"_fname": "Anna", "interests": ["c"], "prefs": {"y": 2}, "vip": False},
    )]


def test_null_clears_the_email_and_the_phones(harness: Harness) -> None:
    """Given a profile with e-mail and phones, null for each clears its column and
    keeps every other field; the profile is then found by its id only."""
    [created] = harness.import_(msg(email="c@example.com", data={"_fname": "C", "phones": ["+79000000001"]}))
    pid = created["profile_id"]
    [cleared] = harness.import_(msg(email="c@example.com", data={"email": None, "phones": None}))
    assert (cleared["error"], cleared["profile_id"]) == (0, pid), cleared
    assert harness.rows("SELECT profile_id, email, phones, fields FROM profiles") == [
        (pid, None, [], {"_fname": "C"})
    ]
    [by_id] = harness.import_(msg(matching="profile_id", profile_id=pid, data={"email": "new@example.com"}))
    assert (by_id["error"], by_id["profile_id"]) == (0, pid), by_id
    assert harness.rows("SELECT email FROM profiles") == [("new@example.com",)]


def test_a_new_email_in_data_replaces_the_matched_one(harness: Harness) -> None:
    """Given old@, a message matching old@ with data.email new@ moves the profile to
    new@: the next message for new@ finds it, one for old@ creates another."""
    first, moved, by_new, by_old = harness.import_(
        msg(email="old@example.com", data={"_fname": "O"}),
        msg(email="old@example.com", data={"email": "new@example.com"}),
        msg(email="new@example.com", data={"_lname": "N"}),
        msg(email="old@example.com", data={}),
    )
    assert [r["error"] for r in (first, moved, by_new, by_old)] == [0, 0, 0, 0]
    assert first["profile_id"] == moved["profile_id"] == by_new["profile_id"]
    assert by_old["profile_id"] != first["profile_id"]
    assert sorted(harness.rows("SELECT email, fields FROM profiles")) == [
        ("new@example.com", {"_fname": "O", "_lname": "N"}),
        ("old@example.com", {}),
    ]
