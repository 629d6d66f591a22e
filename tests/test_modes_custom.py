"""The custom modes: matching on a custom field (a tags field included) or a subscription's.

docs/contract.md, "`custom`" and "`custom_sub`": on a tags field, every given tag must
be held.

What every mode shares (the table of docs/contract.md, "Matching modes") is checked
for these modes too in test_modes.py.
"""
from __future__ import annotations

from typing import Any

from conftest import Harness, interests_of, msg, ok

# --- custom, on a tags field ------------------------------------------------------------------


def by_tags(value: Any, **fields: Any) -> dict[str, Any]:
    return msg(matching="custom", field_name="interests", field_value=value, **fields)


def test_matching_on_tags_finds_the_profile_holding_all_given_tags(harness: Harness) -> None:
    """Given rgb holds red, green and blue and r holds red, when a message matches on
    interests, then it finds the one profile holding every given tag (in any order,
    any separator), is 409 when both hold them, and creates a profile holding the
    tags when none holds them all; that new profile is then found by them."""
    rgb, r = ok(harness.import_(
        msg(email="rgb@example.com", data={"interests": "red, green, blue"}),
        msg(email="r@example.com", data={"interests": ["red"]}),
    ))
    results = harness.import_(
        by_tags("green, red", feedback_id="green+red"),
        by_tags("blue|green", feedback_id="blue+green"),
        by_tags(" blue ; red ; green ", feedback_id="all three"),
        by_tags("red", feedback_id="red: both hold it"),
        by_tags("purple", update_only=True, feedback_id="nobody, update_only"),
    )
    assert [(x["feedback_id"], x["error"], x["profile_id"], x["matching_field"]) for x in results] == [
        ("green+red", 0, rgb["profile_id"], "interests"),
        ("blue+green", 0, rgb["profile_id"], "interests"),
        ("all three", 0, rgb["profile_id"], "interests"),
        ("red: both hold it", 409, "", "interests"),
        ("nobody, update_only", 404, "", "interests"),
    ]
    assert harness.count("SELECT count(*) FROM profiles") == 2

    # red and yellow: nobody holds both, so a profile is created holding them.
    [created] = ok(harness.import_(by_tags("red;yellow", data={"_fname": "New"})))
    assert created["profile_id"] not in (rgb["profile_id"], r["profile_id"])
    assert sorted(interests_of(harness, created["profile_id"])) == ["red", "yellow"]
    [again] = ok(harness.import_(by_tags("yellow | red")))
    assert again["profile_id"] == created["profile_id"]
    assert harness.count("SELECT count(*) FROM profiles") == 3


def test_matching_on_empty_tags_is_400_never_a_wildcard(harness: Harness) -> None:
    ok(harness.import_(msg(email="a@example.com", data={"interests": ["red"]})))
    results = harness.import_(by_tags(""), by_tags(" , ; | "))
    assert [(r["error"], "field_value" in r["error_text"]) for r in results] == [(400, True)] * 2
    assert harness.count("SELECT count(*) FROM profiles") == 1


def test_a_later_message_in_the_same_batch_finds_the_profile_an_earlier_one_created_by_tags(
    harness: Harness,
) -> None:
    """Messages are applied in their order, batch or not: once the first message has
    created a profile holding red and green, the second, matching on red alone,
    finds it (as it does when the two arrive in different batches)."""
    first, second = ok(harness.import_(
        by_tags("red, green", feedback_id="creates"),
        by_tags("red", feedback_id="finds it", data={"_fname": "Second"}),
    ))
    assert second["profile_id"] == first["profile_id"]
    assert harness.count("SELECT count(*) FROM profiles") == 1


# --- custom_sub ----------------------------------------------------------------------------


def test_custom_sub_creates_a_profile_and_finds_it_by_a_subscription_field(harness: Harness) -> None:
    """custom_sub has no subscription address to write, so a new profile does not hold
    the value; once a subscription carries it (data.subscriptions), the mode finds it."""
    match = {"matching": "custom_sub", "field_name": "loyalty_card", "field_value": "LC-9"}
    [created] = ok(harness.import_(msg(**match, data={"subscriptions": [
        {"resource_id": 24, "channel": "email", "email": "ann@example.com", "custom_fields": {"loyalty_card": "LC-9"}},
    ]})))
    assert created["matching_field"] == "loyalty_card"
    [found] = ok(harness.import_(msg(**match, resource_id=24, data={"_fname": "Ann"})))
    assert found["profile_id"] == created["profile_id"]
    assert found["matching_field"] == "loyalty_card"
    assert harness.count("SELECT count(*) FROM profiles") == 1
