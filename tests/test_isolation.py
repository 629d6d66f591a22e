"""Tenant isolation: a message reads and writes only inside its own account and database.

The seed has account 1 (databases 1 and 2; resource 24 linked to both, 25 to
database 1 only, 26 to none) and account 2 (database 3, resource 30). The 403/404
answers for foreign ids are in test_contract.py; here each test first puts a
profile in the *other* database or account, then checks that a message naming it
never finds it, never changes it, and never conflicts with it.
"""
from __future__ import annotations

from typing import Any

import pytest

from conftest import Harness, msg

ALL_MODES = {
    "email": {"email": "victim@example.com"},
    "email_profile": {"email": "victim@example.com"},
    "email_sub": {"email": "victim@example.com"},
    "phone": {"phone": "+79000000001"},
    "phone_sub": {"phone": "+79000000001"},
    "profile_id": {"profile_id": "0" * 24},
    "push_sub": {"provider": "apns", "subscription_id": "victim-device"},
    "custom": {"field_name": "CRM_ID", "field_value": 7},
    "custom_sub": {"field_name": "loyalty_card", "field_value": "victim-card"},
    "email_phone": {"email": "victim@example.com", "phone": "+79000000001"},
    "email_phone_sub": {"email": "victim@example.com", "phone": "+79000000001"},
}


def victim(db_id: int, account_id: int = 1, resource_id: int = 24) -> dict[str, Any]:
    """A profile with every kind of identity value: e-mail, phone, custom field, and
    e-mail, SMS and push subscriptions with a subscription custom field."""
    return msg(
        account_id=account_id, db_id=db_id, email="victim@example.com", feedback_id=f"victim-{db_id}",
        data={
            "_fname": f"Victim of db {db_id}", "phones": ["+79000000001"], "CRM_ID": 7,
            "subscriptions": [
                {"resource_id": resource_id, "channel": "email", "email": "victim@example.com",
                 **({"custom_fields": {"loyalty_card": "victim-card"}} if resource_id == 24 else {})},
                {"resource_id": resource_id, "channel": "sms", "phone": "+79000000001"},
                {"resource_id": resource_id, "channel": "push", "provider": "apns", "subscription_id": "victim-device"},
            ],
        },
    )


def state(h: Harness) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a message could write, in every database."""
    return {
        "profiles": h.rows("SELECT db_id, profile_id, email, phones, fields::text, updated_at FROM profiles "
                           "ORDER BY 1, 2"),
        "subscriptions": h.rows("SELECT db_id, resource_id, channel, provider, address, profile_id, status, "
                                "custom_fields::text, updated_at FROM subscriptions ORDER BY 1, 2, 3, 4, 5"),
        "events": h.rows("SELECT db_id, profile_id, kind, feedback_id FROM events ORDER BY db_id, event_id"),
    }


def planted(h: Harness, *victims: dict[str, Any]) -> list[str]:
    results = h.import_(*victims)
    assert [r["error"] for r in results] == [0] * len(victims), results
    return [r["profile_id"] for r in results]


def profiles_of(h: Harness, db_id: int) -> list[tuple[Any, ...]]:
    return h.rows("SELECT profile_id, email, fields->>'_fname' FROM profiles WHERE db_id = %s ORDER BY 1", db_id)


# --- reading another database ---------------------------------------------------------------


def test_another_databases_profile_id_is_not_found_and_nothing_is_written(harness: Harness) -> None:
    """Given a profile in database 2 (and one in account 2's database 3), when a message
    of database 1 names its profile_id (plain, with update_only, in upper case), then it
    gets 404, and no profile, subscription or event changes anywhere."""
    db2_id, db3_id = planted(harness, victim(2), victim(3, account_id=2, resource_id=30))
    before = state(harness)
    messages = [
        msg(matching="profile_id", profile_id=db2_id, feedback_id="db2", data={"_fname": "Hijacked"}),
        msg(matching="profile_id", profile_id=db2_id.upper(), feedback_id="db2-upper", data={"_fname": "Hijacked"}),
        msg(matching="profile_id", profile_id=db2_id, feedback_id="db2-update-only", update_only=True,
            data={"subscriptions": [{"resource_id": 24, "channel": "email", "email": "hijack@example.com"}]}),
        msg(matching="profile_id", profile_id=db3_id, feedback_id="db3", data={"_fname": "Hijacked"}),
        msg(account_id=2, db_id=3, matching="profile_id", profile_id=db2_id, feedback_id="db2-from-3",
            data={"_fname": "Hijacked"}),
    ]
    results = harness.import_(*messages)
    assert [(r["error"], r["feedback_id"], r["profile_id"]) for r in results] == [
        (404, m["feedback_id"], "") for m in messages
    ], results
    assert all("profile_id" in r["error_text"] for r in results), results
    assert state(harness) == before


def test_update_only_never_finds_another_databases_profile(harness: Harness) -> None:
    """Given a victim profile in database 2, a message of database 1 with update_only in
    each mode that can find it by a value (e-mail, phone, custom field, subscriptions)
    gets 404, and nothing changes."""
    planted(harness, victim(2))
    before = state(harness)
    modes = [mode for mode in ALL_MODES if mode != "profile_id"]
    messages = [msg(matching=mode, update_only=True, feedback_id=mode, data={"_fname": "Hijacked"}, **ALL_MODES[mode])
                for mode in modes]
    results = harness.import_(*messages)
    assert [(r["feedback_id"], r["error"]) for r in results] == [(mode, 404) for mode in modes], results
    assert state(harness) == before


@pytest.mark.parametrize("mode", sorted(ALL_MODES))
def test_a_value_held_in_another_database_creates_a_profile_of_its_own(harness: Harness, mode: str) -> None:
    """Given a victim profile in database 2 holding the match value (its e-mail, phone,
    custom field, or a subscription with that address), when a message of database 1
    matches on that value, then it never finds, updates or conflicts with the victim:
    a new profile is created in database 1 (profile_id: 404), and database 2 is as it was."""
    [victim_id] = planted(harness, victim(2))
    db2_before = [row for row in state(harness)["profiles"] if row[0] == 2]
    message = msg(matching=mode, feedback_id=mode, data={"_lname": "Own"}, **ALL_MODES[mode])
    if mode in ("email_sub", "phone_sub", "push_sub", "email_phone_sub"):
        message["resource_id"] = 24  # linked to both databases: the look-up is still per database
    if mode == "custom_sub":  # the new profile's subscription carries the value (docs/contract.md)
        message["data"]["subscriptions"] = [{"resource_id": 24, "channel": "email", "email": "own@example.com",
                                             "custom_fields": {"loyalty_card": ALL_MODES[mode]["field_value"]}}]
    [result] = harness.import_(message)
    if mode == "profile_id":
        assert result["error"] == 404, result
    else:
        assert result["error"] == 0, result
        assert result["profile_id"] != victim_id
        assert [pid for pid, *_ in profiles_of(harness, 1)] == [result["profile_id"]]
    assert [row for row in state(harness)["profiles"] if row[0] == 2] == db2_before
    assert harness.rows("SELECT DISTINCT db_id FROM events WHERE feedback_id = %s", mode) in ([], [(1,)])


def test_the_same_email_in_two_databases_is_two_profiles(harness: Harness) -> None:
    """Given the same e-mail imported into databases 1, 2 and 3 (two accounts), then
    there are three profiles; updating the one of database 1 (also taking the address as
    data.email and the same subscription) leaves the others as they were."""
    ids = planted(harness, victim(1), victim(2), victim(3, account_id=2, resource_id=30))
    assert len(set(ids)) == 3
    others = [row for row in state(harness)["profiles"] if row[0] != 1]
    [result] = harness.import_(msg(email="VICTIM@example.com", feedback_id="update-1", data={
        "_fname": "Updated", "email": "victim@example.com",
        "subscriptions": [
            {"resource_id": 24, "channel": "email", "email": "victim@example.com", "status": "unsubscribed"}],
    }))
    assert (result["error"], result["profile_id"]) == (0, ids[0]), result
    assert profiles_of(harness, 1) == [(ids[0], "victim@example.com", "Updated")]
    assert [row for row in state(harness)["profiles"] if row[0] != 1] == others
    assert harness.rows(
        "SELECT db_id, status FROM subscriptions WHERE channel = 'email' AND address = 'victim@example.com' ORDER BY 1"
    ) == [(1, "unsubscribed"), (2, "subscribed"), (3, "subscribed")]


# --- writing into another database or account ------------------------------------------------


@pytest.mark.parametrize("mode", sorted(ALL_MODES))
def test_another_accounts_database_is_refused_in_every_mode(harness: Harness, mode: str) -> None:
    """Given account 2's victim in database 3, when account 1 names database 3 (or
    account 2 names database 1) in any mode, then the answer is 403 before any look-up,
    and nothing changes in any database."""
    planted(harness, victim(3, account_id=2, resource_id=30), victim(1))
    before = state(harness)
    results = harness.import_(
        msg(account_id=1, db_id=3, matching=mode, feedback_id="1-to-3", data={"_fname": "Hijacked"}, **ALL_MODES[mode]),
        msg(account_id=2, db_id=1, matching=mode, feedback_id="2-to-1", data={"_fname": "Hijacked"}, **ALL_MODES[mode]),
    )
    assert [(r["error"], r["profile_id"]) for r in results] == [(403, ""), (403, "")], results
    assert all("db_id" in r["error_text"] for r in results), results
    assert state(harness) == before


@pytest.mark.parametrize("mode", ["email", "email_sub", "phone_sub", "push_sub", "custom_sub", "email_phone_sub"])
def test_a_foreign_or_unlinked_resource_is_refused_in_every_mode(harness: Harness, mode: str) -> None:
    """Given account 2's resource 30 (holding account 2's subscriptions), resource 26
    (account 1's, linked nowhere) and resource 25 (linked to database 1, not 2), when a
    message of database 2 names any of them as resource_id, then it gets 403 naming the
    key; in data.subscriptions, another account's resource is 403 too and one of the
    account's that is not linked to the database 400 (a subscription is a value of the
    data); and nothing changes."""
    planted(harness, victim(3, account_id=2, resource_id=30), victim(2))
    before = state(harness)
    messages = []
    for resource in (30, 26, 25):
        messages.append(msg(db_id=2, matching=mode, resource_id=resource, feedback_id=f"res-{resource}",
                            **ALL_MODES[mode]))
        messages.append(msg(db_id=2, matching=mode, feedback_id=f"sub-{resource}", **ALL_MODES[mode], data={
            "subscriptions": [{"resource_id": resource, "channel": "email", "email": "victim@example.com",
                               "status": "unsubscribed"}]}))
    results = harness.import_(*messages)
    for message, result in zip(messages, results):
        in_data = "resource_id" not in message
        code = 400 if in_data and message["feedback_id"] != "sub-30" else 403
        assert (result["error"], result["profile_id"]) == (code, ""), (message, result)
        key = "data.subscriptions[0].resource_id" if in_data else "resource_id"
        assert key in result["error_text"], result
    assert state(harness) == before


def test_a_batch_of_interleaved_tenants_stays_apart(harness: Harness) -> None:
    """Given one batch interleaving messages of databases 1, 2 and 3 (two accounts) with
    the same e-mails, phones and CRM_IDs, then each database ends with exactly its own
    profiles, each holding only its own database's writes."""
    messages = []
    for i in range(30):
        for account_id, db_id in ((1, 1), (1, 2), (2, 3)):
            messages.append(msg(account_id=account_id, db_id=db_id, email=f"shared{i % 10}@example.com",
                                feedback_id=f"{db_id}-{i}", data={"_fname": f"db{db_id}", "CRM_ID": i % 10}))
    results = harness.import_(*messages)
    assert [r["error"] for r in results] == [0] * len(messages), [r for r in results if r["error"]][:3]
    for db_id in (1, 2, 3):
        rows = profiles_of(harness, db_id)
        assert len(rows) == 10
        assert {name for _pid, _email, name in rows} == {f"db{db_id}"}
    ids = {db: {pid for pid, *_ in profiles_of(harness, db)} for db in (1, 2, 3)}
    assert not (ids[1] & ids[2] or ids[1] & ids[3] or ids[2] & ids[3])
    for message, result in zip(messages, results):
        assert result["profile_id"] in ids[message["db_id"]], (message, result)
