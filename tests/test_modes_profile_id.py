"""The profile_id mode: it finds a profile by its id and never creates one.

docs/contract.md, "`profile_id`".

What every mode shares (the table of docs/contract.md, "Matching modes") is checked
for this mode too in test_modes.py; another database's profile id is never found
(test_isolation.py).
"""
from __future__ import annotations

from conftest import Harness, events_of, msg


def test_profile_id_matching_finds_an_existing_profile_and_never_creates(harness: Harness) -> None:
    """Given one profile, profile_id matching updates it by its id;
    an id that names no profile gets 404 and creates nothing, update_only or not."""
    [created] = harness.import_(msg(email="known@example.com", data={"_fname": "Old"}, feedback_id="create"))
    pid = created["profile_id"]
    unknown = "0123456789abcdef01234567"
    found, missing, missing_update_only = harness.import_(
        msg(matching="profile_id", profile_id=pid, data={"_fname": "New"}, feedback_id="found"),
        msg(matching="profile_id", profile_id=unknown, data={"_fname": "Ghost"}, feedback_id="missing"),
        msg(matching="profile_id", profile_id=unknown, update_only=True, data={}, feedback_id="missing2"),
    )
    assert (found["error"], found["profile_id"], found["matching_field"]) == (0, pid, "profile_id")
    for result in (missing, missing_update_only):
        assert result["error"] == 404, result
        assert result["profile_id"] == ""
        assert result["matching_field"] == "profile_id"
        assert "profile_id" in result["error_text"]
    assert harness.rows("SELECT profile_id, email, fields FROM profiles") == [
        (pid, "known@example.com", {"_fname": "New"})
    ]
    assert events_of(harness, "missing") == 0
