"""Matching mode `phone`: the profile's phones or its SMS subscriptions."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.catalog import Database
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.profile_data import ProfileWrite

from ._shared import phone_of, resource_of


class PhoneMatcher(Matcher):
    name = "phone"
    description = "the profile's phones or an SMS subscription (resource_id narrows the subscriptions)"
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
        phones = [q.values["phone"] for q in queries]
        by_profile = lookup.profiles_by_phone(phones)
        by_subscription = lookup.subscribers("sms", phones, resource_ids=[q.resource_id for q in queries])
        return [Found.of(p | s, "phone") for p, s in zip(by_profile, by_subscription)]

    def new_profile(self, query: Query) -> ProfileWrite:
        return ProfileWrite(values={"phones": [query.values["phone"]]})


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [PhoneMatcher()]
