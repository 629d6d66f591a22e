"""Matching mode `email_sub`: e-mail subscriptions only."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.catalog import Database
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.profile_data import ProfileWrite

from ._shared import email_of, new_subscription, resource_of


class EmailSubMatcher(Matcher):
    name = "email_sub"
    description = "e-mail subscriptions only (resource_id narrows them; a new profile is subscribed to it)"
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
        found = lookup.subscribers(
            "email", [q.values["email"] for q in queries], resource_ids=[q.resource_id for q in queries]
        )
        return [Found.of(ids, "email") for ids in found]

    def new_profile(self, query: Query) -> ProfileWrite:
        return new_subscription(query, "email", query.values["email"])


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [EmailSubMatcher()]
