"""Matching mode `custom`: a declared custom field of the database."""
from __future__ import annotations

from dbimport.api import FieldMatcher, Matcher, hookimpl


class CustomMatcher(FieldMatcher):
    name = "custom"
    description = "a declared custom field of the database (tags: the profile holds all given tags)"


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [CustomMatcher()]
