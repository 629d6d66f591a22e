from conftest import msg


def test_create_then_update_returns_the_same_profile(harness):
    results = harness.import_(
        msg(email="john@example.com", data={"_fname": "John"}, feedback_id="a"),
        msg(email=" JOHN@example.COM ", data={"_lname": "Doe"}, feedback_id="b"),
    )
    assert [r["error"] for r in results] == [0, 0]
    assert results[0]["profile_id"] == results[1]["profile_id"]
    assert harness.rows("SELECT email, fields FROM profiles") == [
        ("john@example.com", {"_fname": "John", "_lname": "Doe"})
    ]
