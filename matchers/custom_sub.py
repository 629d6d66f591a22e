"""Matching mode `custom_sub`: a custom field of the database's subscriptions."""
from __future__ import annotations

from dbimport.api import FieldMatcher, Matcher, hookimpl


class CustomSubMatcher(FieldMatcher):
    name = "custom_sub"
    of_subscriptions = True
    description = (
        "a custom field of subscriptions, declared by a resource linked to the database "
        "(resource_id narrows the search to that resource)"
    )


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [CustomSubMatcher()]
