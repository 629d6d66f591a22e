"""Profile data: field types and declarations, tags fields, merging writes, subscriptions.

docs/contract.md, "Profile data" and "Subscriptions".

Each field case is one message creating a profile of its own; all cases share one
worker run (`answer_cases` in conftest.py), and each test reads its case's answer and
row.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import Answered, Case, Harness, assert_answer, counts, interests_of, msg, ok

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


def good(field: str, label: str, value: Any, stored: Any = STORED) -> FieldCase:
    return FieldCase(field, label, value, True, stored)


def bad(field: str, label: str, value: Any, db_id: int = 1) -> FieldCase:
    return FieldCase(field, label, value, False, db_id=db_id)


STRING_SYSTEM_FIELDS = [
    "_fname", "_lname", "_city", "_country", "_region", "_postal_code", "_vendor",
    "_regcity", "_regcountry", "_regurl", "_browser", "_os",
]

SYSTEM = [
    *(good(name, "text", "Some text", "Some text") for name in STRING_SYSTEM_FIELDS),
    *(bad(name, "number", 42) for name in STRING_SYSTEM_FIELDS),
    bad("_fname", "list", ["John"]),
    bad("_city", "object", {"name": "Paris"}),
    good("_fname", "null", None, ABSENT),
    good("_bdate", "date", "1990-05-17", "1990-05-17"),
    good("_bdate", "datetime-utc", "1990-05-17T10:00:00Z"),
    good("_bdate", "datetime-offset", "1990-05-17T10:00:00+03:00"),
    bad("_bdate", "dotted", "17.05.1990"),
    bad("_bdate", "feb-30", "1990-02-30"),
    bad("_bdate", "number", 19900517),
    bad("_bdate", "no-offset", "1990-05-17T10:00"),
    bad("_bdate", "empty", ""),
    good("_regdate", "utc", "2024-05-01T12:00:00Z"),
    good("_regdate", "fraction-offset", "2024-05-01T12:00:00.123+02:00"),
    bad("_regdate", "date-only", "2024-05-01"),
    bad("_regdate", "word", "yesterday"),
    bad("_regdate", "month-13", "2024-13-01T00:00:00Z"),
    bad("_regdate", "epoch", 1714564800),
    *(good(name, "v4", "192.0.2.1", "192.0.2.1") for name in ("_regip", "_ip")),
    *(good(name, "v6", "2001:db8::1", "2001:db8::1") for name in ("_regip", "_ip")),
    *(bad(name, "octet-999", "999.1.1.1") for name in ("_regip", "_ip")),
    *(bad(name, "hostname", "example.com") for name in ("_regip", "_ip")),
    *(bad(name, "number", 3232235777) for name in ("_regip", "_ip")),
    good("_tz", "moscow", "Europe/Moscow", "Europe/Moscow"),
    good("_tz", "buenos-aires", "America/Argentina/Buenos_Aires", "America/Argentina/Buenos_Aires"),
    bad("_tz", "mars", "Mars/Olympus"),
    bad("_tz", "offset", "+03:00"),
    bad("_tz", "number", 3),
    good("_sex", "male", "male", "male"),
    good("_sex", "female", "female", "female"),
    bad("_sex", "other", "other"),
    bad("_sex", "empty", ""),
    bad("_sex", "number", 1),
    good("_status", "one", 1, 1),
    good("_status", "zero", 0, 0),
    bad("_status", "word", "active"),
    bad("_status", "fraction", 1.5),
    bad("_status", "bool", True),
]

CONTACTS = [
    good("email", "spaced-caps", " Valid@Example.COM ", "valid@example.com"),
    bad("email", "malformed", "not-an-address"),
    bad("email", "empty", ""),
    bad("email", "number", 5),
    good("phones", "list", ["+79000000000", "+7 (900) 000-00-01"], ["+79000000000", "+79000000001"]),
    good("phones", "empty", [], []),
    bad("phones", "too-short", ["123"]),
    bad("phones", "letters", ["call me"]),
    bad("phones", "number", 5),
    bad("phones", "null-item", [None]),
    bad("phones", "nested", [["+79000000000"]]),
]

CUSTOM = [
    good("CRM_ID", "int", 42, 42),
    bad("CRM_ID", "word", "abc"),
    bad("CRM_ID", "fraction", 1.5),
    bad("CRM_ID", "bool", True),
    good("score", "fraction", 4.5, 4.5),
    good("score", "int", 3, 3),
    bad("score", "word", "high"),
    bad("score", "bool", True),
    bad("score", "nan", "NaN"),
    good("nickname", "text", "nick", "nick"),
    bad("nickname", "number", 5),
    bad("nickname", "object", {"a": 1}),
    good("vip", "true", True, True),
    good("vip", "false", False, False),
    bad("vip", "word", "maybe"),
    bad("vip", "int", 1),
    good("since", "date", "2020-01-31", "2020-01-31"),
    bad("since", "dmy", "31/01/2020"),
    bad("since", "feb-30", "2020-02-30"),
    bad("since", "number", 20200131),
    good("tier", "option", "gold", "gold"),
    bad("tier", "not-an-option", "bronze"),
    bad("tier", "list", ["gold"]),
    good("last_ip", "v4", "10.0.0.1", "10.0.0.1"),
    good("last_ip", "v6", "::1", "::1"),
    bad("last_ip", "octet-256", "10.0.0.256"),
    bad("last_ip", "number", 5),
    good("interests", "list", ["a", "b"], ["a", "b"]),
    good("interests", "separated", "a, b|c;d", ["a", "b", "c", "d"]),
    bad("interests", "number", 5),
    bad("interests", "list-of-numbers", [1]),
    bad("interests", "object", {"a": 1}),
    good("prefs", "object", {"a": 1, "b": {"c": [1]}}, {"a": 1, "b": {"c": [1]}}),
    bad("prefs", "list", [1]),
    bad("prefs", "string", "x"),
    good("orders", "objects", [{"id": 1}, {"id": 2}], [{"id": 1}, {"id": 2}]),
    good("orders", "empty", [], []),
    bad("orders", "numbers", [1]),
    bad("orders", "object", {"id": 1}),
    bad("orders", "mixed", [{"id": 1}, "x"]),
]

UNDECLARED = [
    bad("unknown_field", "undeclared", 1),
    bad("crm_id", "other-letter-case", 1),
    bad("score", "declared-for-another-db", 1.5, db_id=2),
    bad("_nickname", "unknown-system-field", "nick"),
    bad("_", "bare-underscore", "x"),
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


# --- tags fields -------------------------------------------------------------------------


WRITTEN_AS = [
    (["red", "green"], ["red", "green"]),
    ("red,green", ["red", "green"]),
    ("red | green", ["red", "green"]),
    ("red;green", ["red", "green"]),
    (" red ; green|blue,red ", ["red", "green", "blue"]),  # trimmed, each tag once
    ([" red", "red ", "green"], ["red", "green"]),
    ("red,,green;", ["red", "green"]),  # empty pieces are no tags
]


def test_a_tags_field_accepts_a_list_or_one_string_separated_by_comma_pipe_or_semicolon(harness: Harness) -> None:
    results = ok(harness.import_(*(
        msg(email=f"t{i}@example.com", data={"interests": value}) for i, (value, _) in enumerate(WRITTEN_AS)
    )))
    assert [interests_of(harness, r["profile_id"]) for r in results] == [stored for _, stored in WRITTEN_AS]


# --- subscriptions ---------------------------------------------------------------------------

SUBSCRIPTION_ROW = (
    "SELECT resource_id, channel, provider, address, profile_id, status, priority, custom_fields, cats "
    "FROM subscriptions ORDER BY resource_id, channel, provider, address"
)


def subscribe(*subscriptions: dict[str, Any], email: str = "ann@example.com", **fields: Any) -> dict[str, Any]:
    return msg(email=email, data={"subscriptions": list(subscriptions)}, **fields)


def test_data_subscriptions_are_created_with_every_attribute(harness: Harness) -> None:
    """Given a new profile, when its message lists subscriptions on several channels,
    then each is stored with its resource, channel, address, status (default
    subscribed), priority, custom fields and categories."""
    [r] = ok(harness.import_(subscribe(
        {"resource_id": 24, "channel": "email", "email": " Ann@Example.COM ", "status": "unsubscribed",
         "priority": 5, "custom_fields": {"loyalty_card": "LC-7", "level": "2"}, "cats": ["news", "sale"]},
        {"resource_id": 24, "channel": "sms", "phone": "+7 (900) 000-00-11", "cats": "a, b|c;a"},
        {"resource_id": 25, "channel": "push", "provider": "android-firebase", "subscription_id": "tok-7",
         "status": "suspended"},
        {"resource_id": 24, "channel": "viber", "address": "viber-user-7", "priority": "3"},
    )))
    pid = r["profile_id"]
    assert harness.rows(SUBSCRIPTION_ROW) == [
        (24, "email", "", "ann@example.com", pid, "unsubscribed", 5, {"loyalty_card": "LC-7", "level": 2},
         ["news", "sale"]),
        (24, "sms", "", "+79000000011", pid, "subscribed", None, {}, ["a", "b", "c"]),
        (24, "viber", "", "viber-user-7", pid, "subscribed", 3, {}, []),
        (25, "push", "android-firebase", "tok-7", pid, "suspended", None, {}, []),
    ]


def test_importing_a_subscription_again_updates_it(harness: Harness) -> None:
    """A subscription is identified by resource, channel and address: importing it
    again (address written differently) updates that row. Given values replace,
    absent ones stay, custom fields merge, and null clears a custom field."""
    ok(harness.import_(subscribe(
        {"resource_id": 24, "channel": "email", "email": "ann@example.com", "priority": 1,
         "custom_fields": {"loyalty_card": "LC-1"}, "cats": ["news"]},
    )))
    ok(harness.import_(subscribe(
        {"resource_id": 24, "channel": "email", "email": "ANN@example.com ", "status": "suspended",
         "custom_fields": {"level": 3}},
    )))
    [(_, _, _, _, pid, *after_first_update)] = harness.rows(SUBSCRIPTION_ROW)
    assert after_first_update == ["suspended", 1, {"loyalty_card": "LC-1", "level": 3}, ["news"]]

    [r] = ok(harness.import_(subscribe(
        {"resource_id": 24, "channel": "email", "email": "ann@example.com", "status": "subscribed", "priority": 9,
         "custom_fields": {"loyalty_card": None}, "cats": "sale;promo"},
    )))
    assert r["profile_id"] == pid
    assert harness.rows(SUBSCRIPTION_ROW) == [
        (24, "email", "", "ann@example.com", pid, "subscribed", 9, {"level": 3}, ["sale", "promo"]),
    ]


def test_the_same_address_on_another_resource_or_channel_is_another_subscription(harness: Harness) -> None:
    [r] = ok(harness.import_(subscribe(
        {"resource_id": 24, "channel": "email", "email": "ann@example.com"},
        {"resource_id": 25, "channel": "email", "email": "ann@example.com"},
        {"resource_id": 24, "channel": "newsletter", "address": "ann@example.com"},
        {"resource_id": 24, "channel": "push", "provider": "android-firebase", "subscription_id": "tok-1"},
        {"resource_id": 24, "channel": "push", "provider": "ios-apns", "subscription_id": "tok-1"},
    )))
    assert harness.rows("SELECT resource_id, channel, provider, address FROM subscriptions ORDER BY 1, 2, 3") == [
        (24, "email", "", "ann@example.com"),
        (24, "newsletter", "", "ann@example.com"),
        (24, "push", "android-firebase", "tok-1"),
        (24, "push", "ios-apns", "tok-1"),
        (25, "email", "", "ann@example.com"),
    ]
    assert harness.count("SELECT count(*) FROM subscriptions WHERE profile_id = %s", r["profile_id"]) == 5


def test_taking_another_profiles_subscription_is_409_and_writes_nothing(harness: Harness) -> None:
    """Given Ann owns an SMS subscription, when Bob's message (Bob existing, or new)
    lists it, then it is 409 naming the subscription, and none of the message is
    written: Bob's fields and other subscriptions stay as they were, or Bob is not created."""
    ann, bob = ok(harness.import_(
        subscribe({"resource_id": 24, "channel": "sms", "phone": "+79000000011"}),
        msg(email="bob@example.com", data={"_fname": "Bob"}),
    ))
    before = counts(harness)
    taking = [{"resource_id": 25, "channel": "email", "email": "bob@example.com"},
              {"resource_id": 24, "channel": "sms", "phone": "+7 900 000 00 11", "status": "unsubscribed"}]
    results = harness.import_(
        msg(email="bob@example.com", data={"_fname": "Taker", "subscriptions": taking}),
        msg(email="carl@example.com", data={"_fname": "Taker", "subscriptions": taking}),
    )
    assert [(r["error"], r["profile_id"]) for r in results] == [(409, ""), (409, "")]
    assert all("data.subscriptions[1]" in r["error_text"] for r in results), results
    assert counts(harness) == before
    assert harness.rows("SELECT profile_id, status FROM subscriptions") == [(ann["profile_id"], "subscribed")]
    assert harness.rows("SELECT fields->>'_fname' FROM profiles WHERE profile_id = %s", bob["profile_id"]) == [("Bob",)]


def test_two_profiles_claiming_one_new_subscription_in_one_batch_the_first_wins(harness: Harness) -> None:
    results = harness.import_(
        subscribe({"resource_id": 24, "channel": "email", "email": "shared@example.com"}, email="ann@example.com"),
        subscribe({"resource_id": 24, "channel": "email", "email": "Shared@example.com"}, email="bob@example.com"),
    )
    assert [r["error"] for r in results] == [0, 409]
    assert harness.rows("SELECT profile_id FROM subscriptions") == [(results[0]["profile_id"],)]
    assert harness.count("SELECT count(*) FROM profiles") == 1


def test_subscription_values_are_checked_and_the_error_names_them(harness: Harness) -> None:
    """Custom fields must be declared by the subscription's resource (24 declares
    loyalty_card: string and level: int; 25 declares none) and be of their type;
    status, priority, cats and the channel's address are checked too. Each bad
    value is 400 naming it, and nothing is written."""
    cases = [
        ({"resource_id": 24, "channel": "email", "email": "a@example.com", "custom_fields": {"nope": 1}},
         "data.subscriptions[0].custom_fields.nope"),
        ({"resource_id": 24, "channel": "email", "email": "a@example.com", "custom_fields": {"level": "abc"}},
         "data.subscriptions[0].custom_fields.level"),
        ({"resource_id": 24, "channel": "email", "email": "a@example.com", "custom_fields": {"loyalty_card": 7}},
         "data.subscriptions[0].custom_fields.loyalty_card"),
        ({"resource_id": 25, "channel": "email", "email": "a@example.com", "custom_fields": {"loyalty_card": "x"}},
         "data.subscriptions[0].custom_fields.loyalty_card"),
        ({"resource_id": 24, "channel": "email", "email": "a@example.com", "custom_fields": ["level"]},
         "data.subscriptions[0].custom_fields"),
        ({"resource_id": 24, "channel": "email", "email": "a@example.com", "status": "gone"},
         "data.subscriptions[0].status"),
        ({"resource_id": 24, "channel": "email", "email": "a@example.com", "priority": "high"},
         "data.subscriptions[0].priority"),
        ({"resource_id": 24, "channel": "email", "email": "a@example.com", "cats": 5}, "data.subscriptions[0].cats"),
        ({"resource_id": 24, "channel": "email", "email": "not-an-address"}, "data.subscriptions[0].email"),
        ({"resource_id": 24, "channel": "email"}, "data.subscriptions[0].email"),
        ({"resource_id": 24, "channel": "sms", "phone": "12"}, "data.subscriptions[0].phone"),
        ({"resource_id": 24, "channel": "push", "subscription_id": "tok"}, "data.subscriptions[0].provider"),
        ({"resource_id": 24, "channel": "push", "provider": "android-firebase"},
         "data.subscriptions[0].subscription_id"),
        ({"resource_id": 24, "email": "a@example.com"}, "data.subscriptions[0].channel"),
        ({"channel": "email", "email": "a@example.com"}, "data.subscriptions[0].resource_id"),
        ({"resource_id": 24, "channel": "email", "email": "a@example.com", "colour": "red"},
         "data.subscriptions[0].colour"),
    ]
    results = harness.import_(*(subscribe(sub, feedback_id=str(i)) for i, (sub, _) in enumerate(cases)))
    got = [(r["error"], name in r["error_text"]) for r, (_, name) in zip(results, cases)]
    assert got == [(400, True)] * len(cases), [(name, r["error_text"]) for r, (_, name) in zip(results, cases)]
    assert counts(harness) == (0, 0, 0)


def test_a_subscription_to_another_accounts_resource_is_403_and_to_an_unlinked_one_400(harness: Harness) -> None:
    """Resource 30 is account 2's (403); 26 is linked to no database and 25 is not linked
    to database 2 (400): each names the subscription's resource_id, nothing written."""
    results = harness.import_(
        subscribe({"resource_id": 30, "channel": "email", "email": "a@example.com"}),
        subscribe({"resource_id": 26, "channel": "email", "email": "a@example.com"}),
        subscribe({"resource_id": 25, "channel": "email", "email": "a@example.com"}, db_id=2),
        subscribe({"resource_id": 24, "channel": "email", "email": "a@example.com"},
                  {"resource_id": 30, "channel": "sms", "phone": "+79000000011"}),
    )
    assert [(r["error"], r["profile_id"]) for r in results] == [(403, ""), (400, ""), (400, ""), (403, "")]
    assert [r["error_text"].split()[0] for r in results] == [
        "data.subscriptions[0].resource_id", "data.subscriptions[0].resource_id",
        "data.subscriptions[0].resource_id", "data.subscriptions[1].resource_id",
    ]
    assert counts(harness) == (0, 0, 0)


# --- skip_invalid_subscriptions (docs/contract.md, "Subscriptions"): with it, invalid
# subscriptions are left out and named in error_text; without it, the message is 400
# (403 for another account's resource) and nothing is written. ----------------------------


VALID_SUBSCRIPTION = {"resource_id": 24, "channel": "email", "email": "ok@example.com"}
# Each kind of invalid subscription, the code it gets without the flag, and what the text names.
INVALID_SUBSCRIPTIONS: dict[str, tuple[dict[str, Any], int, str]] = {
    "bad address": ({"resource_id": 24, "channel": "email", "email": "not-an-address"}, 400,
                    "data.subscriptions[1].email is not a valid e-mail address"),
    "unknown resource": ({"resource_id": 99, "channel": "email", "email": "a@example.com"}, 400,
                         "data.subscriptions[1].resource_id 99: no such resource"),
    "resource not linked": ({"resource_id": 26, "channel": "email", "email": "a@example.com"}, 400,
                            "data.subscriptions[1].resource_id 26 is a resource of account 1 that is not linked"),
    "another account's resource": ({"resource_id": 30, "channel": "email", "email": "a@example.com"}, 403,
                                   "data.subscriptions[1].resource_id 30 is a resource of another account"),
    "bad custom field": ({"resource_id": 24, "channel": "email", "email": "a@example.com",
                          "custom_fields": {"level": "high"}}, 400,
                         "data.subscriptions[1].custom_fields.level must be an integer"),
    "undeclared custom field": ({"resource_id": 24, "channel": "email", "email": "a@example.com",
                                 "custom_fields": {"colour": "red"}}, 400,
                                "data.subscriptions[1].custom_fields.colour is not a field declared"),
}


def skipping_message(kind: str, *, skip: bool | None) -> dict[str, Any]:
    extra = {} if skip is None else {"skip_invalid_subscriptions": skip}
    invalid = INVALID_SUBSCRIPTIONS[kind][0]
    return msg(email="p@example.com", feedback_id=kind, data={"_fname": "Pat", "subscriptions": [VALID_SUBSCRIPTION, invalid]},
               **extra)


@pytest.mark.parametrize("kind", sorted(INVALID_SUBSCRIPTIONS))
def test_with_the_flag_the_profile_and_valid_subscriptions_are_written_and_the_invalid_one_named(
    harness: Harness, kind: str,
) -> None:
    [result] = harness.import_(skipping_message(kind, skip=True))
    assert result["error"] == 0, result
    assert result["error_text"].startswith("left out invalid subscriptions: "), result
    assert INVALID_SUBSCRIPTIONS[kind][2] in result["error_text"], result
    assert harness.rows("SELECT fields->>'_fname' FROM profiles WHERE profile_id = %s", result["profile_id"]) == [
        ("Pat",)]
    assert harness.rows("SELECT resource_id, address FROM subscriptions") == [(24, "ok@example.com")]


@pytest.mark.parametrize("skip", [False, None], ids=["false", "absent"])
@pytest.mark.parametrize("kind", sorted(INVALID_SUBSCRIPTIONS))
def test_without_the_flag_the_message_is_refused_and_nothing_is_written(
    harness: Harness, kind: str, skip: bool | None,
) -> None:
    [result] = harness.import_(skipping_message(kind, skip=skip))
    _invalid, code, names = INVALID_SUBSCRIPTIONS[kind]
    assert (result["error"], result["profile_id"]) == (code, ""), result
    assert names in result["error_text"], result
    assert counts(harness) == (0, 0, 0)


def test_every_invalid_subscription_of_a_message_is_named(harness: Harness) -> None:
    subscriptions = [VALID_SUBSCRIPTION, INVALID_SUBSCRIPTIONS["bad address"][0], INVALID_SUBSCRIPTIONS["another account's resource"][0]]
    [result] = harness.import_(msg(email="p@example.com", skip_invalid_subscriptions=True,
                                   data={"subscriptions": subscriptions}))
    assert result["error"] == 0
    assert "data.subscriptions[1].email" in result["error_text"]
    assert "data.subscriptions[2].resource_id" in result["error_text"]


def test_the_flag_must_be_true_or_false(harness: Harness) -> None:
    [result] = harness.import_(msg(email="p@example.com", skip_invalid_subscriptions="yes"))
    assert result["error"] == 400 and "skip_invalid_subscriptions" in result["error_text"], result
