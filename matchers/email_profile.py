"""Matching mode `email_profile`: the profile's own e-mail only."""
from __future__ import annotations

from dbimport.api import EMAIL, IdentityMatcher, Matcher, hookimpl


class EmailProfileMatcher(IdentityMatcher):
    name = "email_profile"
    identity = EMAIL
    in_subscriptions = False
    description = "the profile's email only"


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [EmailProfileMatcher()]
