"""Matching mode `phone_sub`: SMS subscriptions only."""
from __future__ import annotations

from dbimport.api import PHONE, IdentityMatcher, Matcher, hookimpl


class PhoneSubMatcher(IdentityMatcher):
    name = "phone_sub"
    identity = PHONE
    in_profile = False
    description = "SMS subscriptions only (resource_id narrows them; a new profile is subscribed to it)"


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [PhoneSubMatcher()]
