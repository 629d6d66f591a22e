"""Tags fields (SPEC §4) and matching on them with `custom` (SPEC §3): all given tags must be held."""
from __future__ import annotations

from typing import Any

from conftest import Harness, msg


def ok(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert [r["error"] for r in results] == [0] * len(results), results
    return results


def interests_of(harness: Harness, profile_id: str) -> Any:
    [(value,)] = harness.rows("SELECT fields->'interests' FROM profiles WHERE profile_id = %s", profile_id)
    return value


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


def test_a_tags_value_that_is_neither_a_list_nor_a_string_is_400_naming_the_field(harness: Harness) -> None:
    results = harness.import_(
        msg(email="a@example.com", data={"interests": 5}),
        msg(email="b@example.com", data={"interests": ["red", 5]}),
        msg(email="c@example.com", data={"interests": {"red": True}}),
    )
    assert [(r["error"], "data.interests" in r["error_text"]) for r in results] == [(400, True)] * 3
    assert harness.count("SELECT count(*) FROM profiles") == 0


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
