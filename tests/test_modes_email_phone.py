"""The e-mail-or-phone modes: an e-mail and/or a phone, the e-mail's profile first.

docs/contract.md, "`email_phone`" and "`email_phone_sub`".

What every mode shares (the table of docs/contract.md, "Matching modes") is checked
for these modes too in test_modes.py.
"""
from __future__ import annotations

from conftest import Harness, msg


def test_email_phone_modes_without_email_or_phone_are_400_naming_both_keys(harness: Harness) -> None:
    """A message with neither key gets an error that says which keys it needs."""
    results = harness.import_(msg(matching="email_phone"), msg(matching="email_phone_sub"))
    assert [(r["error"], r["profile_id"]) for r in results] == [(400, "")] * 2
    for r in results:
        assert "email" in r["error_text"] and "phone" in r["error_text"], r["error_text"]
