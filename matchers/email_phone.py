"""Matching mode `email_phone`: the profile's e-mail, then its phones."""
from __future__ import annotations

from dbimport.api import EitherIdentityMatcher, Matcher, hookimpl


class EmailPhoneMatcher(EitherIdentityMatcher):
    name = "email_phone"
    description = "the profile's email, then its phones; both finding different profiles is 409"


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [EmailPhoneMatcher()]
