"""Matching mode `email_profile`: the profile's own e-mail only."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.catalog import Database
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.profile_data import ProfileWrite

from ._shared import email_of


class EmailProfileMatcher(Matcher):
    name = "email_profile"
    description = "the profile's email only"
    schema = {"required": ["email"], "properties": {"email": {"type": "string"}}}

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        email = email_of(message)
        return Query(keys=(Key("email", email),), matching_field="email", values={"email": email})

    def find(self, lookup: Lookup, query: Query) -> Found:
        return self.find_many(lookup, [query])[0]

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        found = lookup.profiles_by_email([q.values["email"] for q in queries])
        return [Found.of(ids, "email") for ids in found]

    def new_profile(self, query: Query) -> ProfileWrite:
        return ProfileWrite(values={"email": query.values["email"]})


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [EmailProfileMatcher()]
