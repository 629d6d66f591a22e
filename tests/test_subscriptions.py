"""Subscriptions in `data` (SPEC §4): created, updated, identified, owned by one profile, checked."""
from __future__ import annotations

from typing import Any

from conftest import Harness, counts, msg, ok

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


def test_subscription_to_a_resource_of_another_account_or_unlinked_is_403(harness: Harness) -> None:
    """Resource 30 is account 2's, 26 is linked to no database, 25 is not linked to
    database 2: 403 naming the subscription's resource_id, nothing written."""
    results = harness.import_(
        subscribe({"resource_id": 30, "channel": "email", "email": "a@example.com"}),
        subscribe({"resource_id": 26, "channel": "email", "email": "a@example.com"}),
        subscribe({"resource_id": 25, "channel": "email", "email": "a@example.com"}, db_id=2),
        subscribe({"resource_id": 24, "channel": "email", "email": "a@example.com"},
                  {"resource_id": 30, "channel": "sms", "phone": "+79000000011"}),
    )
    assert [(r["error"], r["profile_id"]) for r in results] == [(403, "")] * 4
    assert [r["error_text"].split()[0] for r in results] == [
        "data.subscriptions[0].resource_id", "data.subscriptions[0].resource_id",
        "data.subscriptions[0].resource_id", "data.subscriptions[1].resource_id",
    ]
    assert counts(harness) == (0, 0, 0)
