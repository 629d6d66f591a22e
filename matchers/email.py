"""Matching mode `email`: the profile's e-mail or its e-mail subscriptions."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.catalog import Database
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.profile_data import ProfileWrite

from ._shared import email_of, resource_of


class EmailMatcher(Matcher):
    name = "email"
    description = "the profile's email or an e-mail subscription (resource_id narrows the subscriptions)"
    schema = {"required": ["email"], "properties": {"email": {"type": "string"}}}

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        email = email_of(message)
        return Query(
            keys=(Key("email", email),),
            matching_field="email",
            resource_id=resource_of(message, db),
            values={"email": email},
        )

    def find(self, lookup: Lookup, query: Query) -> Found:
        return self.find_many(lookup, [query])[0]

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        emails = [q.values["email"] for q in queries]
        by_profile = lookup.profiles_by_email(emails)
        by_subscription = lookup.subscribers(
            "email", emails, resource_ids=[q.resource_id for q in queries]
        )
        return [Found.of(p | s, "email") for p, s in zip(by_profile, by_subscription)]

    def new_profile(self, query: Query) -> ProfileWrite:
        return ProfileWrite(values={"email": query.values["email"]})


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [EmailMatcher()]
