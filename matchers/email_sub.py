"""Matching mode `email_sub`: e-mail subscriptions only."""
from __future__ import annotations

from dbimport.api import EMAIL, IdentityMatcher, Matcher, hookimpl


class EmailSubMatcher(IdentityMatcher):
    name = "email_sub"
    identity = EMAIL
    in_profile = False
    description = "e-mail subscriptions only (resource_id narrows them; a new profile is subscribed to it)"


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [EmailSubMatcher()]
