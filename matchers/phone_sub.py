"""Matching mode `phone_sub`: SMS subscriptions only."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.catalog import Database
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.profile_data import ProfileWrite

from ._shared import new_subscription, phone_of, resource_of


class PhoneSubMatcher(Matcher):
    name = "phone_sub"
    description = "SMS subscriptions only (resource_id narrows them; a new profile is subscribed to it)"
    schema = {"required": ["phone"], "properties": {"phone": {"type": "string"}}}

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        phone = phone_of(message)
        return Query(
            keys=(Key("phone", phone),),
            matching_field="phone",
            resource_id=resource_of(message, db),
            values={"phone": phone},
        )

    def find(self, lookup: Lookup, query: Query) -> Found:
        return self.find_many(lookup, [query])[0]

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        found = lookup.subscribers(
            "sms", [q.values["phone"] for q in queries], resource_ids=[q.resource_id for q in queries]
        )
        return [Found.of(ids, "phone") for ids in found]

    def new_profile(self, query: Query) -> ProfileWrite:
        return new_subscription(query, "sms", query.values["phone"])


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [PhoneSubMatcher()]
