"""Matching modes: the table of docs/contract.md, "Matching modes", checked for all eleven modes.

What each mode searches and needs, what it does on no match, with update_only and on
several matches, what it reports, and that a batch applies its messages in order
across modes.

The modes' own tests are in test_modes_email.py, test_modes_email_phone.py,
test_modes_custom.py and test_modes_profile_id.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from conftest import BUILT_IN_MODES, Harness, counts, msg, ok

# --- on no match: create, holding the match value; the next message finds it ---------


@dataclass(frozen=True)
class Stored:
    """What a profile holds besides `_` fields; strings may carry `{i}`, the row number."""

    email: str | None = None
    phones: tuple[str, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)
    # (resource_id, channel, provider, address, status)
    subscriptions: frozenset[tuple[int, str, str, str, str]] = frozenset()

    def format(self, i: int) -> Stored:
        return Stored(
            email=None if self.email is None else self.email.format(i=i),
            phones=tuple(p.format(i=i) for p in self.phones),
            fields=self.fields,
            subscriptions=frozenset((r, c, p, a.format(i=i), st) for r, c, p, a, st in self.subscriptions),
        )


def stored_profiles(harness: Harness) -> dict[str, Stored]:
    subscriptions: dict[str, set[tuple[int, str, str, str, str]]] = {}
    for profile_id, *sub in harness.rows(
        "SELECT profile_id, resource_id, channel, provider, address, status FROM subscriptions"
    ):
        subscriptions.setdefault(profile_id, set()).add(tuple(sub))  # type: ignore[arg-type]
    return {
        profile_id: Stored(
            email=email,
            phones=tuple(phones),
            fields={k: v for k, v in fields.items() if not k.startswith("_")},
            subscriptions=frozenset(subscriptions.get(profile_id, ())),
        )
        for profile_id, email, phones, fields in harness.rows("SELECT profile_id, email, phones, fields FROM profiles")
    }


@dataclass(frozen=True)
class Creates:
    """A mode's first message (no match: creates) and a second one with the same values
    written differently (case, spaces, phone separators), which must find the profile.
    String values carry `{i}`, the row number, so that the rows never meet."""

    mode: str
    first: dict[str, Any]
    again: dict[str, Any]
    matching_fields: tuple[str, str]
    holds: Stored

    def message(self, keys: dict[str, Any], i: int, **data: Any) -> dict[str, Any]:
        keys = {k: v.format(i=i) if isinstance(v, str) else v for k, v in keys.items()}
        return msg(matching=self.mode, **keys, feedback_id=str(i), data=data)


ANN = "ann{i}@example.com"
ANN_PHONE = "+79001{i:02d}2233"
EMAIL_SUB = (24, "email", "", ANN, "subscribed")
SMS_SUB = (24, "sms", "", ANN_PHONE, "subscribed")

CREATES = [
    Creates("email", {"email": "Ann{i}@Example.com"}, {"email": "  ann{i}@EXAMPLE.COM "}, ("email", "email"),
            Stored(email=ANN)),
    Creates("email_profile", {"email": " ANN{i}@example.com"}, {"email": "ann{i}@example.com\t"}, ("email", "email"),
            Stored(email=ANN)),
    # The subscription-only modes write the value as a subscription to resource_id, not into the profile.
    Creates("email_sub", {"email": "Ann{i}@Example.com", "resource_id": 24}, {"email": " ann{i}@example.COM "},
            ("email", "email"), Stored(subscriptions=frozenset({EMAIL_SUB}))),
    Creates("phone", {"phone": "+7 (900) 1{i:02d}-22-33"}, {"phone": "+7.900.1{i:02d}.22.33"}, ("phone", "phone"),
            Stored(phones=(ANN_PHONE,))),
    Creates("phone_sub", {"phone": "+7 900 1{i:02d}-22-33", "resource_id": 24}, {"phone": "7(900)1{i:02d}2233"},
            ("phone", "phone"), Stored(subscriptions=frozenset({SMS_SUB}))),
    Creates("push_sub", {"provider": "android-firebase", "subscription_id": "tok-{i}", "resource_id": 24},
            {"provider": "android-firebase", "subscription_id": " tok-{i} "}, ("subscription_id", "subscription_id"),
            Stored(subscriptions=frozenset({(24, "push", "android-firebase", "tok-{i}", "subscribed")}))),
    # An int field matched by the string "12345" stores, and then finds, the integer.
    Creates("custom", {"field_name": "CRM_ID", "field_value": "12345"}, {"field_name": "CRM_ID", "field_value": 12345},
            ("CRM_ID", "CRM_ID"), Stored(fields={"CRM_ID": 12345})),
    Creates("custom", {"field_name": "nickname", "field_value": "Neo"},
            {"field_name": "nickname", "field_value": "Neo"},
            ("nickname", "nickname"), Stored(fields={"nickname": "Neo"})),
    Creates("custom", {"field_name": "since", "field_value": "2024-05-01"},
            {"field_name": "since", "field_value": "2024-05-01T10:00:00Z"}, ("since", "since"),
            Stored(fields={"since": "2024-05-01"})),
    Creates("custom", {"field_name": "tier", "field_value": "gold"}, {"field_name": "tier", "field_value": "gold"},
            ("tier", "tier"), Stored(fields={"tier": "gold"})),
    Creates("email_phone", {"email": "Ann{i}@Example.com", "phone": "+7 900 1{i:02d}-22-33"},
            {"phone": "+79001{i:02d}2233"}, ("email", "phone"), Stored(email=ANN, phones=(ANN_PHONE,))),
    Creates("email_phone", {"phone": "+7 900 1{i:02d}-22-33"}, {"phone": "+7 (900) 1{i:02d}.22.33"},
            ("phone", "phone"), Stored(phones=(ANN_PHONE,))),
    Creates("email_phone", {"email": "Ann{i}@Example.com"}, {"email": "ann{i}@example.com"}, ("email", "email"),
            Stored(email=ANN)),
    Creates("email_phone_sub", {"email": "Ann{i}@Example.com", "phone": "+7 900 1{i:02d}-22-33", "resource_id": 24},
            {"phone": "+79001{i:02d}2233"}, ("email", "phone"), Stored(subscriptions=frozenset({EMAIL_SUB, SMS_SUB}))),
]


def test_no_match_creates_a_profile_holding_the_match_value_that_the_next_message_finds(harness: Harness) -> None:
    """Given an empty database, when a row's message matches nothing, then a profile is
    created holding the match value (in the profile, or as a subscription to
    resource_id for the subscription-only modes); a second message, with the value
    written differently, finds that same profile and adds to it. (A create that nothing
    could find again is refused: see "no unreachable profiles" below.)"""
    first = ok(harness.import_(*(c.message(c.first, i, _fname=f"first{i}") for i, c in enumerate(CREATES))))
    again = harness.import_(*(c.message(c.again, i, _lname=f"again{i}") for i, c in enumerate(CREATES)))
    stored = stored_profiles(harness)

    wrong = []
    for i, (case, one, two) in enumerate(zip(CREATES, first, again)):
        got = (two["error"], (one["matching_field"], two["matching_field"]),
               two["profile_id"] == one["profile_id"], stored.get(one["profile_id"]))
        if got != (0, case.matching_fields, True, case.holds.format(i)):
            wrong.append(f"{case.mode} {case.first}: {got}")
    assert wrong == [], "\n".join(wrong)
    assert len(stored) == len(CREATES)
    assert harness.count(
        "SELECT count(*) FROM profiles WHERE fields->>'_fname' LIKE 'first%%' AND fields->>'_lname' LIKE 'again%%'"
    ) == len(CREATES)


def test_data_values_win_over_the_match_value_of_a_new_profile(harness: Harness) -> None:
    """A new profile starts with the match value, unless `data` sets the same field."""
    [r] = ok(harness.import_(msg(email="match@example.com", data={"email": "given@example.com"})))
    assert harness.rows("SELECT profile_id, email FROM profiles") == [(r["profile_id"], "given@example.com")]


# --- what each mode searches -----------------------------------------------------------


def given_two_profiles(harness: Harness) -> dict[str, str]:
    """`prof` holds its values in the profile; `subs` only in subscriptions of resource 24."""
    results = ok(harness.import_(*given_pair(0)))
    return {r["feedback_id"].split("-")[0]: r["profile_id"] for r in results}


def given_pair(i: int) -> list[dict[str, Any]]:
    """Messages creating `prof-i` and `subs-i`, whose values carry `i`: pairs never meet."""
    return [
        msg(matching="email_profile", email=f"prof{i}@example.com", feedback_id=f"prof-{i}",
            data={"phones": [f"+7900{i:03d}0001"], "CRM_ID": 1000 + i, "nickname": f"prof{i}"}),
        msg(matching="custom", field_name="nickname", field_value=f"subs{i}", feedback_id=f"subs-{i}", data={
            "subscriptions": [
                {"resource_id": 24, "channel": "email", "email": f"sub{i}@example.com",
                 "custom_fields": {"loyalty_card": f"LC-{i}"}},
                {"resource_id": 24, "channel": "sms", "phone": f"+7900{i:03d}0002"},
                {"resource_id": 24, "channel": "push", "provider": "android-firebase", "subscription_id": f"tok-{i}"},
            ]}),
    ]


@dataclass(frozen=True)
class Search:
    """A probe of a given pair: `keys` are templates of the pair's values ({i}, {crm})."""

    mode: str
    keys: dict[str, Any]
    finds: str  # "prof", "subs", or "new": nothing found, a profile is created
    matching_field: str
    why: str = field(default="", compare=False)
    # A subscription-only mode creates only what it can find again: the subscription
    # `data` gives the new profile, where `resource_id` does not.
    subscribes: dict[str, Any] | None = field(default=None, compare=False)

    def message(self, i: int) -> dict[str, Any]:
        keys = {k: v.format(i=i, crm=1000 + i) if isinstance(v, str) else v for k, v in self.keys.items()}
        data: dict[str, Any] = {"_city": f"probe{i}"}
        if self.subscribes is not None:
            data["subscriptions"] = [{k: formatted(v, i) for k, v in self.subscribes.items()}]
        return msg(matching=self.mode, **keys, feedback_id=f"probe-{i}", data=data)


def formatted(value: Any, i: int) -> Any:
    if isinstance(value, dict):
        return {k: formatted(v, i) for k, v in value.items()}
    return value.format(i=i) if isinstance(value, str) else value


PROF_EMAIL, SUB_EMAIL, OTHER_EMAIL = "prof{i}@example.com", "sub{i}@example.com", "other{i}@example.com"
PROF_PHONE, SUB_PHONE = "+7 900 {i:03d}-00-01", "+7 (900) {i:03d}.00.02"
TOKEN = {"provider": "android-firebase", "subscription_id": "tok-{i}"}

SEARCHES = [
    Search("email", {"email": PROF_EMAIL}, "prof", "email", "the profile's email"),
    Search("email", {"email": " SUB{i}@Example.COM "}, "subs", "email", "or an e-mail subscription"),
    Search("email_profile", {"email": PROF_EMAIL}, "prof", "email", "the profile's email"),
    Search("email_profile", {"email": SUB_EMAIL}, "new", "email", "not subscriptions"),
    Search("email_sub", {"email": SUB_EMAIL}, "subs", "email", "e-mail subscriptions"),
    Search("email_sub", {"email": PROF_EMAIL}, "new", "email", "not the profile's email",
           subscribes={"resource_id": 25, "channel": "email", "email": PROF_EMAIL}),
    Search("phone", {"phone": PROF_PHONE}, "prof", "phone", "the profile's phones"),
    Search("phone", {"phone": SUB_PHONE}, "subs", "phone", "or an SMS subscription"),
    Search("phone_sub", {"phone": SUB_PHONE}, "subs", "phone", "SMS subscriptions"),
    Search("phone_sub", {"phone": PROF_PHONE}, "new", "phone", "not the profile's phones",
           subscribes={"resource_id": 25, "channel": "sms", "phone": PROF_PHONE}),
    Search("push_sub", TOKEN, "subs", "subscription_id", "provider and subscription id"),
    Search("push_sub", {**TOKEN, "provider": "ios-apns"}, "new", "subscription_id",
           "the provider is part of the identity",
           subscribes={"resource_id": 25, "channel": "push", "provider": "ios-apns", "subscription_id": "tok-{i}"}),
    Search("custom", {"field_name": "CRM_ID", "field_value": "{crm}"}, "prof", "CRM_ID", "an int field, by a string"),
    Search("custom", {"field_name": "nickname", "field_value": "subs{i}"}, "subs", "nickname", "a string field"),
    Search("custom", {"field_name": "nickname", "field_value": "SUBS{i}"}, "new", "nickname",
           "a custom value is compared exactly"),
    Search("custom_sub", {"field_name": "loyalty_card", "field_value": "LC-{i}"}, "subs", "loyalty_card",
           "a subscription's custom field"),
    Search("custom_sub", {"field_name": "loyalty_card", "field_value": "LC-{i}-2"}, "new", "loyalty_card",
           "no such value", subscribes={"resource_id": 24, "channel": "email", "email": "card{i}@example.com",
                                        "custom_fields": {"loyalty_card": "LC-{i}-2"}}),
    Search("email_phone", {"email": PROF_EMAIL}, "prof", "email", "the profile's email"),
    Search("email_phone", {"phone": PROF_PHONE}, "prof", "phone", "the profile's phones"),
    Search("email_phone", {"email": PROF_EMAIL, "phone": PROF_PHONE}, "prof", "email", "both agree: email first"),
    Search("email_phone", {"email": OTHER_EMAIL, "phone": PROF_PHONE}, "prof", "phone",
           "the e-mail finds nothing: the phone matched"),
    Search("email_phone", {"email": SUB_EMAIL}, "new", "email", "not subscriptions"),
    Search("email_phone_sub", {"email": SUB_EMAIL}, "subs", "email", "e-mail subscriptions"),
    Search("email_phone_sub", {"phone": SUB_PHONE}, "subs", "phone", "SMS subscriptions"),
    Search("email_phone_sub", {"email": OTHER_EMAIL, "phone": SUB_PHONE}, "subs", "phone",
           "the e-mail finds nothing: the phone matched"),
    Search("email_phone_sub", {"email": PROF_EMAIL, "phone": PROF_PHONE}, "new", "email",
           "not the profile's email or phones", subscribes={"resource_id": 25, "channel": "email", "email": PROF_EMAIL}),
    # resource_id limits the subscription search to that resource.
    Search("email", {"email": SUB_EMAIL, "resource_id": 24}, "subs", "email", "a subscription of resource 24"),
    Search("email", {"email": SUB_EMAIL, "resource_id": 25}, "new", "email", "resource 25 has none"),
    Search("email", {"email": PROF_EMAIL, "resource_id": 25}, "prof", "email",
           "resource_id narrows subscriptions, not the profile's email"),
    Search("email_sub", {"email": SUB_EMAIL, "resource_id": 25}, "new", "email", "resource 25 has none"),
    Search("phone", {"phone": SUB_PHONE, "resource_id": 25}, "new", "phone", "resource 25 has none"),
    Search("phone_sub", {"phone": SUB_PHONE, "resource_id": 24}, "subs", "phone", "resource 24"),
    Search("phone_sub", {"phone": SUB_PHONE, "resource_id": 25}, "new", "phone", "resource 25 has none"),
    Search("push_sub", {**TOKEN, "resource_id": 25}, "new", "subscription_id", "resource 25 has none"),
    Search("custom_sub", {"field_name": "loyalty_card", "field_value": "LC-{i}", "resource_id": 24}, "subs",
           "loyalty_card", "resource 24"),
    Search("email_phone_sub", {"email": SUB_EMAIL, "resource_id": 25}, "new", "email", "resource 25 has none"),
    Search("email_phone_sub", {"phone": SUB_PHONE, "resource_id": 25}, "new", "phone", "resource 25 has none"),
]


def test_each_mode_searches_what_its_row_says(harness: Harness) -> None:
    """Given, for each row, a pair: `prof` (values in the profile) and `subs` (values
    in subscriptions of resource 24), when the row's message matches in its mode,
    then it finds the profile its row of the table names, or creates a new one, and reports
    the field that matched. Each row has a pair of its own, so the rows run together."""
    given = {r["feedback_id"]: r["profile_id"] for r in ok(harness.import_(
        *(m for i in range(len(SEARCHES)) for m in given_pair(i))
    ))}
    results = harness.import_(*(case.message(i) for i, case in enumerate(SEARCHES)))

    wrong = []
    for i, (case, r) in enumerate(zip(SEARCHES, results)):
        if case.finds == "new":
            finds_as_expected = r["profile_id"] != "" and r["profile_id"] not in given.values()
        else:
            finds_as_expected = r["profile_id"] == given[f"{case.finds}-{i}"]
        if (r["error"], r["matching_field"], finds_as_expected) != (0, case.matching_field, True):
            wrong.append((case, r))
    assert wrong == [], "\n".join(f"{c.mode} {c.keys} should find {c.finds} ({c.why}): {r}" for c, r in wrong)
    new = sum(case.finds == "new" for case in SEARCHES)
    assert harness.count("SELECT count(*) FROM profiles") == len(given) + new
    assert harness.rows(
        "SELECT fields->>'_city' FROM profiles WHERE fields ? '_city' ORDER BY 1"
    ) == sorted((f"probe{i}",) for i in range(len(SEARCHES)))


# --- update_only -----------------------------------------------------------------------

UNMATCHED = {
    "email": {"email": "nobody@example.com"},
    "email_profile": {"email": "nobody@example.com"},
    "email_sub": {"email": "nobody@example.com", "resource_id": 24},
    "phone": {"phone": "+79009999999"},
    "phone_sub": {"phone": "+79009999999", "resource_id": 24},
    "profile_id": {"profile_id": "0123456789abcdef01234567"},
    "push_sub": {"provider": "android-firebase", "subscription_id": "tok-none", "resource_id": 24},
    "custom": {"field_name": "CRM_ID", "field_value": 999},
    "custom_sub": {"field_name": "loyalty_card", "field_value": "LC-none"},
    "email_phone": {"email": "nobody@example.com", "phone": "+79009999999"},
    "email_phone_sub": {"email": "nobody@example.com", "phone": "+79009999999", "resource_id": 24},
}


def test_update_only_without_a_match_is_404_in_every_mode_and_writes_nothing(harness: Harness) -> None:
    """Given profiles that the values do not match, when each mode gets update_only,
    then each message is 404 with no profile id, and nothing is written."""
    assert sorted(UNMATCHED) == sorted(BUILT_IN_MODES)
    given = given_two_profiles(harness)
    before = counts(harness)
    results = harness.import_(*(
        msg(matching=mode, **keys, update_only=True, feedback_id=mode, data={
            "_fname": "Ghost", "subscriptions": [{"resource_id": 25, "channel": "email", "email": "ghost@example.com"}],
        })
        for mode, keys in UNMATCHED.items()
    ))
    assert [(r["feedback_id"], r["error"], r["profile_id"]) for r in results] == [
        (mode, 404, "") for mode in UNMATCHED
    ]
    assert counts(harness) == before
    assert harness.count("SELECT count(*) FROM profiles WHERE fields ? '_fname'") == 0

    # With a match, update_only updates.
    [r] = ok(harness.import_(msg(email="sub0@example.com", update_only=True, data={"_fname": "Upd"})))
    assert r["profile_id"] == given["subs"]
    assert harness.rows("SELECT profile_id FROM profiles WHERE fields ? '_fname'") == [(given["subs"],)]


# --- needs, and bad match values -------------------------------------------------------

# (mode, match keys, key the error must name). Empty and malformed values are 400:
# never a wildcard that would match every profile lacking the value.
BAD_INPUT = [
    ("email", {}, "email"),
    ("email", {"email": ""}, "email"),
    ("email", {"email": "   "}, "email"),
    ("email", {"email": "not-an-email"}, "email"),
    ("email", {"email": "a@b@example.com"}, "email"),
    ("email", {"email": 42}, "email"),
    ("email_profile", {}, "email"),
    ("email_profile", {"email": ""}, "email"),
    ("email_sub", {}, "email"),
    ("email_sub", {"email": ""}, "email"),
    ("phone", {}, "phone"),
    ("phone", {"phone": ""}, "phone"),
    ("phone", {"phone": " - ( ) "}, "phone"),
    ("phone", {"phone": "+7 900"}, "phone"),
    ("phone", {"phone": "+7 900 abc 12 34"}, "phone"),
    ("phone", {"phone": "+1234567890123456"}, "phone"),
    ("phone_sub", {}, "phone"),
    ("phone_sub", {"phone": ""}, "phone"),
    ("profile_id", {}, "profile_id"),
    ("profile_id", {"profile_id": ""}, "profile_id"),
    ("profile_id", {"profile_id": "not-a-profile-id"}, "profile_id"),
    ("push_sub", {"subscription_id": "tok-1"}, "provider"),
    ("push_sub", {"provider": "android-firebase"}, "subscription_id"),
    ("push_sub", {"provider": "android-firebase", "subscription_id": ""}, "subscription_id"),
    ("push_sub", {"provider": " ", "subscription_id": "tok-1"}, "provider"),
    ("custom", {"field_value": "1"}, "field_name"),
    ("custom", {"field_name": "CRM_ID"}, "field_value"),
    ("custom", {"field_name": "CRM_ID", "field_value": ""}, "field_value"),
    ("custom", {"field_name": "nickname", "field_value": "  "}, "field_value"),
    ("custom", {"field_name": "CRM_ID", "field_value": "abc"}, "field_value"),
    ("custom", {"field_name": "no_such_field", "field_value": "1"}, "field_name"),
    ("custom", {"field_name": "tier", "field_value": "bronze"}, "field_value"),
    ("custom_sub", {"field_value": "LC-1"}, "field_name"),
    ("custom_sub", {"field_name": "loyalty_card"}, "field_value"),
    ("custom_sub", {"field_name": "loyalty_card", "field_value": ""}, "field_value"),
    ("custom_sub", {"field_name": "level", "field_value": "high"}, "field_value"),
    ("custom_sub", {"field_name": "CRM_ID", "field_value": "1"}, "field_name"),
    ("email_phone", {"email": "", "phone": ""}, "email"),
    ("email_phone", {"email": ""}, "email"),
    ("email_phone", {"email": "bad", "phone": "+79000000001"}, "email"),
    ("email_phone", {"email": "prof0@example.com", "phone": "12"}, "phone"),
    ("email_phone_sub", {"phone": ""}, "phone"),
    ("email_phone_sub", {"email": "sub0@example.com", "phone": "x"}, "phone"),
    ("no_such_mode", {"email": "prof0@example.com"}, "matching"),
]


def test_missing_empty_or_malformed_match_values_are_400_naming_the_key(harness: Harness) -> None:
    """Given profiles, some lacking an e-mail or phones, when messages carry a missing,
    empty or malformed match value, then each is 400 naming the key, and nothing is
    written (an empty value is no wildcard)."""
    given_two_profiles(harness)
    before = counts(harness)
    results = harness.import_(*(
        msg(matching=mode, **keys, feedback_id=str(i), data={"_fname": "Wildcard"})
        for i, (mode, keys, _key) in enumerate(BAD_INPUT)
    ))
    got = [(mode, keys, r["error"], r["profile_id"], key in r["error_text"])
           for (mode, keys, key), r in zip(BAD_INPUT, results)]
    assert got == [(mode, keys, 400, "", True) for mode, keys, _key in BAD_INPUT], [
        (row, r["error_text"]) for row, r in zip(BAD_INPUT, results)
        if r["error"] != 400 or row[2] not in r["error_text"]
    ]
    assert [r["feedback_id"] for r in results] == [str(i) for i in range(len(BAD_INPUT))]
    assert counts(harness) == before
    assert harness.count("SELECT count(*) FROM profiles WHERE fields->>'_fname' = 'Wildcard'") == 0


# --- resource_id: tenancy --------------------------------------------------------------


def test_resource_of_another_account_or_not_linked_is_403_and_writes_nothing(harness: Harness) -> None:
    """resource_id 30 is account 2's; 26 is account 1's but linked to no database;
    25 is not linked to database 2. Each is 403 naming resource_id, in every mode
    that takes one, and nothing is written."""
    given_two_profiles(harness)
    before = counts(harness)
    cases = [
        msg(email="sub0@example.com", resource_id=30),
        msg(email="sub0@example.com", resource_id=26),
        msg(email="sub0@example.com", resource_id=25, db_id=2),
        msg(matching="email_sub", email="sub0@example.com", resource_id=30),
        msg(matching="phone", phone="+79000000002", resource_id=26),
        msg(matching="phone_sub", phone="+79000000002", resource_id=30),
        msg(matching="push_sub", provider="android-firebase", subscription_id="tok-0", resource_id=26),
        msg(matching="custom_sub", field_name="loyalty_card", field_value="LC-0", resource_id=30),
        msg(matching="email_phone", email="prof0@example.com", resource_id=26),
        msg(matching="email_phone_sub", email="sub0@example.com", phone="+79000000002", resource_id=30),
    ]
    results = harness.import_(*(dict(m, data={"_fname": "Intruder"}) for m in cases))
    assert [(r["error"], r["profile_id"], "resource_id" in r["error_text"]) for r in results] == [
        (403, "", True)
    ] * len(cases), [r["error_text"] for r in results]
    assert counts(harness) == before


# --- ambiguity: 409, nothing written ---------------------------------------------------


def given_overlapping_profiles(harness: Harness) -> dict[str, str]:
    """`one` and `two` share values: each pair below finds both of them."""
    results = ok(harness.import_(
        msg(matching="email_profile", email="one@example.com", feedback_id="one", data={
            "phones": ["+79000000005"], "nickname": "twin", "subscriptions": [
                {"resource_id": 24, "channel": "email", "email": "esub@example.com",
                 "custom_fields": {"loyalty_card": "LC-X"}},
                {"resource_id": 24, "channel": "sms", "phone": "+79000000009"},
                {"resource_id": 24, "channel": "email", "email": "dual@example.com"},
                {"resource_id": 24, "channel": "push", "provider": "android-firebase", "subscription_id": "tok-dual"},
            ]}),
        msg(matching="email_profile", email="two@example.com", feedback_id="two", data={
            "phones": ["+79000000005", "+79000000007"], "nickname": "twin", "subscriptions": [
                {"resource_id": 24, "channel": "email", "email": "one@example.com"},
                {"resource_id": 25, "channel": "sms", "phone": "+79000000008"},
                {"resource_id": 24, "channel": "sms", "phone": "+79000000010",
                 "custom_fields": {"loyalty_card": "LC-X"}},
                {"resource_id": 25, "channel": "sms", "phone": "+79000000009"},
                {"resource_id": 25, "channel": "email", "email": "dual@example.com"},
                {"resource_id": 25, "channel": "push", "provider": "android-firebase", "subscription_id": "tok-dual"},
            ]}),
    ))
    return {r["feedback_id"]: r["profile_id"] for r in results}


AMBIGUOUS = [
    ("phone", {"phone": "+79000000005"}),  # two profiles hold the phone
    ("phone", {"phone": "+79000000009"}),  # SMS subscriptions of two profiles
    ("email", {"email": "one@example.com"}),  # one's e-mail, two's subscription
    ("email_sub", {"email": "dual@example.com"}),
    ("phone_sub", {"phone": "+79000000009"}),
    ("push_sub", {"provider": "android-firebase", "subscription_id": "tok-dual"}),
    ("custom", {"field_name": "nickname", "field_value": "twin"}),
    ("custom_sub", {"field_name": "loyalty_card", "field_value": "LC-X"}),
    ("email_phone", {"email": "one@example.com", "phone": "+79000000007"}),  # e-mail: one, phone: two
    ("email_phone_sub", {"email": "esub@example.com", "phone": "+79000000008"}),
]


def test_more_than_one_profile_found_is_409_and_writes_nothing(harness: Harness) -> None:
    """Given two profiles sharing values, when a message's match finds both (or
    email_phone's e-mail and phone find different ones), then it is 409 and none
    of its data or subscriptions are written; resource_id can narrow it to one."""
    given = given_overlapping_profiles(harness)
    before = counts(harness)
    results = harness.import_(
        *(
            msg(matching=mode, **keys, feedback_id=mode, data={
                "_fname": "Ambiguous",
                "subscriptions": [{"resource_id": 25, "channel": "email", "email": f"{mode}@example.com"}],
            })
            for mode, keys in AMBIGUOUS
        ),
        # Not ambiguous, but the write would take one's e-mail for two.
        msg(email="two@example.com", feedback_id="takes an e-mail",
            data={"_fname": "Taker", "email": "one@example.com"}),
    )
    assert [(r["feedback_id"], r["error"], r["profile_id"]) for r in results] == [
        *((mode, 409, "") for mode, _keys in AMBIGUOUS), ("takes an e-mail", 409, ""),
    ], [r["error_text"] for r in results]
    assert counts(harness) == before
    assert harness.count("SELECT count(*) FROM profiles WHERE fields ? '_fname'") == 0

    # resource_id narrows an ambiguous subscription match to one profile.
    results = ok(harness.import_(
        msg(matching="email_sub", email="dual@example.com", resource_id=25),
        msg(matching="phone_sub", phone="+79000000009", resource_id=24),
        msg(matching="push_sub", provider="android-firebase", subscription_id="tok-dual", resource_id=25),
    ))
    assert [r["profile_id"] for r in results] == [given["two"], given["one"], given["two"]]
    assert harness.count("SELECT count(*) FROM profiles") == 2


# --- order within a batch ---------------------------------------------------------------


def test_given_two_updates_of_one_profile_by_different_keys_in_one_batch_then_the_later_one_wins(
    harness: Harness,
) -> None:
    """Found by the benchmark's check (bench/throughput.py; profile user311 after 20,000
    messages).

    Given a profile with e-mail a@example.com and CRM_ID 7,
    when one batch holds, in this order: a custom-mode create that writes an e-mail
    (c@example.com), an update of the profile by e-mail (_city "Before"), and an
    update of the same profile by CRM_ID (_city "After"),
    then the profile ends as the messages applied in order leave it: _city "After".
    """
    harness.import_(msg(email="a@example.com", data={"CRM_ID": 7}))
    results = harness.import_(
        msg(matching="custom", field_name="CRM_ID", field_value=9, data={"email": "c@example.com"}, feedback_id="x"),
        msg(email="a@example.com", data={"_city": "Before"}, feedback_id="b"),
        msg(matching="custom", field_name="CRM_ID", field_value=7, data={"_city": "After"}, feedback_id="c"),
    )

    assert [(r["feedback_id"], r["error"]) for r in results] == [("x", 0), ("b", 0), ("c", 0)]
    assert harness.rows("SELECT fields->>'_city' FROM profiles WHERE email = 'a@example.com'") == [("After",)]


# --- no unreachable profiles (docs/contract.md, "Matching modes"): a profile a message
# creates holds its match value, so the same message sent again finds it; in the modes that
# search subscriptions only, a create with nothing to find the profile by is 400. ---------


SUBSCRIPTION_25 = {"resource_id": 25, "channel": "email"}
# A message of each creating mode that can create, with what makes it findable again.
CREATING: dict[str, dict[str, Any]] = {
    "email": {"email": "a@example.com"},
    "email_profile": {"email": "a@example.com"},
    "email_sub, subscribed to resource_id": {"matching": "email_sub", "email": "a@example.com", "resource_id": 24},
    "email_sub, subscription in data": {"matching": "email_sub", "email": "a@example.com", "data": {
        "subscriptions": [{**SUBSCRIPTION_25, "email": " A@Example.com "}]}},
    "phone": {"matching": "phone", "phone": "+79000000001"},
    "phone_sub, subscribed to resource_id": {"matching": "phone_sub", "phone": "+79000000001", "resource_id": 24},
    "phone_sub, subscription in data": {"matching": "phone_sub", "phone": "+7 900 000-00-01", "data": {
        "subscriptions": [{"resource_id": 25, "channel": "sms", "phone": "79000000001"}]}},
    "push_sub, subscribed to resource_id": {"matching": "push_sub", "provider": "apns", "subscription_id": "d1",
                                            "resource_id": 24},
    "push_sub, subscription in data": {"matching": "push_sub", "provider": "apns", "subscription_id": "d1", "data": {
        "subscriptions": [{"resource_id": 25, "channel": "push", "provider": "apns", "subscription_id": "d1"}]}},
    "custom": {"matching": "custom", "field_name": "CRM_ID", "field_value": "42"},
    "custom_sub, subscription in data": {"matching": "custom_sub", "field_name": "loyalty_card", "field_value": "LC1",
                                         "data": {"subscriptions": [{"resource_id": 24, "channel": "email",
                                                                     "email": "c@example.com",
                                                                     "custom_fields": {"loyalty_card": "LC1"}}]}},
    "email_phone": {"matching": "email_phone", "email": "a@example.com", "phone": "+79000000001"},
    "email_phone_sub, subscribed to resource_id": {"matching": "email_phone_sub", "phone": "+79000000001",
                                                   "resource_id": 24},
    "email_phone_sub, subscription in data": {"matching": "email_phone_sub", "email": "a@example.com", "data": {
        "subscriptions": [{**SUBSCRIPTION_25, "email": "a@example.com"}]}},
}
# Sub-only messages that would create a profile nothing finds again.
UNREACHABLE: dict[str, dict[str, Any]] = {
    "email_sub without resource_id": {"matching": "email_sub", "email": "a@example.com"},
    "email_sub, another address in data": {"matching": "email_sub", "email": "a@example.com", "data": {
        "subscriptions": [{**SUBSCRIPTION_25, "email": "b@example.com"}]}},
    "email_sub, an SMS subscription in data": {"matching": "email_sub", "email": "a@example.com", "data": {
        "phones": ["+79000000001"], "subscriptions": [{"resource_id": 25, "channel": "sms", "phone": "+79000000001"}]}},
    "email_sub, the profile's own email in data": {"matching": "email_sub", "email": "a@example.com",
                                                   "data": {"email": "a@example.com"}},
    "email_sub, resource_id but the subscription to another one": {
        "matching": "email_sub", "email": "a@example.com", "resource_id": 24,
        "data": {"subscriptions": [{**SUBSCRIPTION_25, "email": "a@example.com"}]}, "expect": 0},
    "phone_sub without resource_id": {"matching": "phone_sub", "phone": "+79000000001"},
    "push_sub without resource_id": {"matching": "push_sub", "provider": "apns", "subscription_id": "d1"},
    "push_sub, another provider in data": {"matching": "push_sub", "provider": "apns", "subscription_id": "d1", "data": {
        "subscriptions": [{"resource_id": 25, "channel": "push", "provider": "fcm", "subscription_id": "d1"}]}},
    "custom_sub with resource_id only": {"matching": "custom_sub", "field_name": "loyalty_card", "field_value": "LC1",
                                         "resource_id": 24},
    "custom_sub, another value in data": {"matching": "custom_sub", "field_name": "loyalty_card", "field_value": "LC1",
                                          "data": {"subscriptions": [{"resource_id": 24, "channel": "email",
                                                                      "email": "c@example.com",
                                                                      "custom_fields": {"loyalty_card": "LC2"}}]}},
    "email_phone_sub without resource_id": {"matching": "email_phone_sub", "email": "a@example.com",
                                            "phone": "+79000000001"},
}


def creating_message(spec: dict[str, Any], feedback_id: str) -> dict[str, Any]:
    fields = {k: v for k, v in spec.items() if k != "expect"}
    data = fields.pop("data", {})
    return msg(feedback_id=feedback_id, data={"_fname": "Sam", **data}, **fields)


@pytest.mark.parametrize("case", sorted(CREATING))
def test_a_message_that_creates_a_profile_finds_it_when_sent_again(harness: Harness, case: str) -> None:
    first = harness.import_(creating_message(CREATING[case], "first"))
    again = harness.import_(creating_message(CREATING[case], "again"))
    assert [r["error"] for r in first + again] == [0, 0], first + again
    assert first[0]["profile_id"] == again[0]["profile_id"]
    assert harness.count("SELECT count(*) FROM profiles") == 1


def test_profile_id_never_creates(harness: Harness) -> None:
    spec = {"matching": "profile_id", "profile_id": "0" * 24}
    results = harness.import_(creating_message(spec, "first"), creating_message(spec, "again"))
    assert [r["error"] for r in results] == [404, 404]
    assert counts(harness) == (0, 0, 0)


@pytest.mark.parametrize("case", sorted(UNREACHABLE))
def test_a_create_in_a_subscription_only_mode_with_nothing_to_find_it_by_is_400_naming_resource_id(
    harness: Harness, case: str,
) -> None:
    spec = UNREACHABLE[case]
    [result] = harness.import_(creating_message(spec, case))
    if spec.get("expect") == 0:  # resource_id given: the new profile is subscribed to it
        assert result["error"] == 0, result
        return
    assert (result["error"], result["profile_id"]) == (400, ""), result
    assert result["error_text"].startswith("resource_id:"), result
    assert counts(harness) == (0, 0, 0)


def test_an_existing_profile_is_updated_even_when_the_message_could_not_create_one(harness: Harness) -> None:
    """The check is about creating: a message without resource_id still updates the profile
    its address already finds."""
    [created] = harness.import_(creating_message(CREATING["email_sub, subscribed to resource_id"], "create"))
    [updated] = harness.import_(creating_message(UNREACHABLE["email_sub without resource_id"], "update"))
    assert (updated["error"], updated["profile_id"]) == (0, created["profile_id"]), updated
