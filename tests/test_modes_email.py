"""The e-mail modes: an address matched trimmed and case-insensitively, unique per database.

docs/contract.md, "`email`", "`email_profile`" and "`email_sub`": the address is
searched in the profile or in e-mail subscriptions.

Several messages go into one worker run where the contract's order allows it:
the worker answers a batch as if its messages came one by one, so a batch of
"create, then update" is a test of that too. What every mode shares (the table of
docs/contract.md, "Matching modes") is checked for these modes too in test_modes.py.
"""
from __future__ import annotations

from typing import Any

import pytest

from conftest import PROFILE_ID, Harness, events_of, msg


def codes(results: list[dict[str, Any]]) -> list[int]:
    return [r["error"] for r in results]


@pytest.mark.parametrize("mode", ["email", "email_profile"])
def test_email_is_matched_case_insensitively_and_trimmed(harness: Harness, mode: str) -> None:
    """Given a profile created for Mixed@Example.COM, when messages name the same
    address in other cases and with surrounding spaces, then they all update that
    one profile, whose e-mail is stored trimmed and lower-cased."""
    results = harness.import_(
        msg(matching=mode, email="Mixed@Example.COM", data={"_fname": "A"}, feedback_id="create"),
        msg(matching=mode, email="  mixed@example.com ", data={"_lname": "B"}, feedback_id="spaces"),
        msg(matching=mode, email="\tMIXED@EXAMPLE.COM\n", data={"_city": "C"}, feedback_id="upper"),
    )
    assert codes(results) == [0, 0, 0], results
    assert len({r["profile_id"] for r in results}) == 1
    assert {r["matching_field"] for r in results} == {"email"}
    assert harness.rows("SELECT profile_id, email, fields FROM profiles") == [
        (results[0]["profile_id"], "mixed@example.com", {"_fname": "A", "_lname": "B", "_city": "C"})
    ]


def test_a_create_then_an_update_return_the_same_profile_id(harness: Harness) -> None:
    """Given no profile, the first message creates one and the next (in a later run,
    by the other e-mail mode) updates it: both answers carry the same profile id,
    and the events say so."""
    [created] = harness.import_(msg(email="john@example.com", data={"_fname": "John"}, feedback_id="1"))
    [updated] = harness.import_(
        msg(matching="email_profile", email="john@example.com", data={"_lname": "Doe"}, feedback_id="2")
    )
    assert (created["error"], updated["error"]) == (0, 0)
    assert PROFILE_ID.fullmatch(created["profile_id"])
    assert updated["profile_id"] == created["profile_id"]
    assert harness.count("SELECT count(*) FROM profiles") == 1
    assert harness.rows("SELECT feedback_id, kind FROM events ORDER BY event_id") == [
        ("1", "profile_created"), ("2", "profile_updated")
    ]


@pytest.mark.parametrize("mode", ["email", "email_profile"])
def test_update_only_without_a_match_gets_404_and_writes_nothing(harness: Harness, mode: str) -> None:
    """Given no profile for nobody@example.com, an update_only message for it gets 404
    with an empty profile_id, and leaves no profile and no event; an update_only
    message that does match updates."""
    results = harness.import_(
        msg(matching=mode, email="nobody@example.com", update_only=True, data={"_fname": "X"}, feedback_id="miss"),
        msg(matching=mode, email="someone@example.com", data={"_fname": "S"}, feedback_id="create"),
        msg(matching=mode, email="SOMEONE@example.com", update_only=True, data={"_fname": "T"}, feedback_id="hit"),
    )
    miss, created, hit = results
    assert miss["error"] == 404, miss
    assert miss["profile_id"] == ""
    assert miss["matching_field"] == "email"
    assert "update_only" in miss["error_text"]
    assert (created["error"], hit["error"]) == (0, 0)
    assert hit["profile_id"] == created["profile_id"]
    assert harness.rows("SELECT email, fields FROM profiles") == [("someone@example.com", {"_fname": "T"})]
    assert events_of(harness, "miss") == 0


def test_a_write_that_would_take_another_profiles_email_gets_409(harness: Harness) -> None:
    """Given profiles a@ and b@, when a message for b@ (or by b's id, or creating c@)
    sets data.email to a@ in any spelling, then it gets 409 naming data.email and
    nothing of it is written; setting a profile's own e-mail again is fine."""
    a, b = harness.import_(
        msg(email="a@example.com", data={"_fname": "A"}, feedback_id="a"),
        msg(email="b@example.com", data={"_fname": "B"}, feedback_id="b"),
    )
    results = harness.import_(
        msg(email="b@example.com", data={"email": "a@example.com", "_fname": "Taken"}, feedback_id="by-email"),
        msg(email="b@example.com", data={"email": " A@EXAMPLE.COM ", "_fname": "Taken"}, feedback_id="by-case"),
        msg(matching="profile_id", profile_id=b["profile_id"], data={"email": "a@example.com"}, feedback_id="by-id"),
        msg(matching="email_profile", email="b@example.com", data={"email": "a@example.com"}, feedback_id="by-ep"),
        msg(email="c@example.com", data={"email": "a@example.com", "_fname": "C"}, feedback_id="by-create"),
        msg(email="a@example.com", data={"email": "A@example.com", "_lname": "Same"}, feedback_id="own"),
    )
    *conflicts, own = results
    for result in conflicts:
        assert result["error"] == 409, result
        assert result["profile_id"] == ""
        assert "data.email" in result["error_text"], result
    assert (own["error"], own["profile_id"]) == (0, a["profile_id"])
    assert sorted(harness.rows("SELECT profile_id, email, fields FROM profiles")) == sorted([
        (a["profile_id"], "a@example.com", {"_fname": "A", "_lname": "Same"}),
        (b["profile_id"], "b@example.com", {"_fname": "B"}),
    ])
    assert harness.count(
        "SELECT count(*) FROM events WHERE feedback_id = ANY(%s)",
        ["by-email", "by-case", "by-id", "by-ep", "by-create"],
    ) == 0


def test_two_creates_in_one_batch_never_share_an_email(harness: Harness) -> None:
    """Given no profiles, when two messages in one run create profiles for x@ and y@
    that both set data.email to z@, the first wins and the second gets 409."""
    first, second = harness.import_(
        msg(email="x@example.com", data={"email": "z@example.com"}, feedback_id="x"),
        msg(email="y@example.com", data={"email": "z@example.com"}, feedback_id="y"),
    )
    assert first["error"] == 0, first
    assert second["error"] == 409, second
    assert "data.email" in second["error_text"]
    assert harness.rows("SELECT profile_id, email FROM profiles") == [(first["profile_id"], "z@example.com")]


def test_an_email_is_unique_in_the_order_of_the_messages(harness: Harness) -> None:
    """Within one run, messages act in publish order: an e-mail created by an earlier
    message cannot be taken by a later one (409), while an e-mail an earlier message
    gave up can be."""
    p, taken, a, freed, took_freed = harness.import_(
        msg(email="p@example.com", feedback_id="p"),
        msg(email="q@example.com", data={"email": "p@example.com"}, feedback_id="q-takes-p"),
        msg(email="a@example.com", feedback_id="a"),
        msg(email="a@example.com", data={"email": "a2@example.com"}, feedback_id="a-moves"),
        msg(email="b@example.com", data={"email": "a@example.com"}, feedback_id="b-takes-a"),
    )
    assert codes([p, taken, a, freed, took_freed]) == [0, 409, 0, 0, 0]
    assert freed["profile_id"] == a["profile_id"]
    assert took_freed["profile_id"] not in (p["profile_id"], a["profile_id"])
    assert sorted(harness.rows("SELECT email FROM profiles")) == [
        ("a2@example.com",), ("a@example.com",), ("p@example.com",)
    ]


def test_email_matches_subscriptions_and_email_profile_does_not(harness: Harness) -> None:
    """Given profile P (owner@) with an e-mail subscription for sub@, mode email finds
    P by sub@ while email_profile does not and creates Q with e-mail sub@; from then
    on mode email finds two profiles for sub@: 409, nothing written."""
    p, by_email, by_profile, ambiguous = harness.import_(
        msg(email="owner@example.com", data={"subscriptions": [
            {"resource_id": 24, "channel": "email", "email": "sub@example.com"},
        ]}, feedback_id="p"),
        msg(email="SUB@example.com", data={"_fname": "via subscription"}, feedback_id="email"),
        msg(matching="email_profile", email="sub@example.com", data={"_fname": "Q"}, feedback_id="email_profile"),
        msg(email="sub@example.com", data={"_fname": "ambiguous"}, feedback_id="ambiguous"),
    )
    assert codes([p, by_email, by_profile]) == [0, 0, 0], [p, by_email, by_profile]
    assert by_email["profile_id"] == p["profile_id"]
    assert by_profile["profile_id"] != p["profile_id"]
    assert ambiguous["error"] == 409, ambiguous
    assert ambiguous["profile_id"] == ""
    assert sorted(harness.rows("SELECT profile_id, email, fields FROM profiles")) == sorted([
        (p["profile_id"], "owner@example.com", {"_fname": "via subscription"}),
        (by_profile["profile_id"], "sub@example.com", {"_fname": "Q"}),
    ])
    assert events_of(harness, "ambiguous") == 0


def test_email_with_resource_id_searches_that_resources_subscriptions_only(harness: Harness) -> None:
    """Given P subscribed to resource 24 as sub@, mode email with resource_id 25 does
    not find P by sub@ (it creates), while resource_id 24 does."""
    p, other, same = harness.import_(
        msg(email="owner@example.com", data={"subscriptions": [
            {"resource_id": 24, "channel": "email", "email": "sub@example.com"},
        ]}),
        msg(email="sub@example.com", resource_id=25, feedback_id="other"),
        msg(email="sub@example.com", resource_id=24, feedback_id="same"),
    )
    assert codes([p, other]) == [0, 0]
    assert other["profile_id"] != p["profile_id"]
    # sub@ is now both P's subscription (resource 24) and the new profile's e-mail.
    assert same["error"] == 409, same
