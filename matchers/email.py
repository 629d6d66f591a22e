"""Matching mode `email`: the profile's e-mail or its e-mail subscriptions."""
from __future__ import annotations

from dbimport.api import EMAIL, IdentityMatcher, Matcher, hookimpl


class EmailMatcher(IdentityMatcher):
    name = "email"
    identity = EMAIL
    description = "the profile's email or an e-mail subscription (resource_id narrows the subscriptions)"


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [EmailMatcher()]
