"""Matching mode `phone`: the profile's phones or its SMS subscriptions."""
from __future__ import annotations

from dbimport.api import PHONE, IdentityMatcher, Matcher, hookimpl


class PhoneMatcher(IdentityMatcher):
    name = "phone"
    identity = PHONE
    description = "the profile's phones or an SMS subscription (resource_id narrows the subscriptions)"


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [PhoneMatcher()]
