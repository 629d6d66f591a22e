"""Matching mode `push_sub`: push subscriptions, by provider and subscription id."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport import normalize
from dbimport.catalog import Database
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.profile_data import ProfileWrite

from ._shared import new_subscription, resource_of

class PushSubMatcher(Matcher):
    name = "push_sub"
    description = "push subscriptions by provider and subscription_id (a new profile is subscribed to resource_id)"
    schema = {
        "required": ["provider", "subscription_id"],
        "properties": {"provider": {"type": "string"}, "subscription_id": {"type": "string"}},
    }

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        provider = normalize.text(message["provider"], field="provider")
        subscription_id = normalize.text(
            message["subscription_id"], field="subscription_id", max_bytes=normalize.MAX_IDENTITY_BYTES
        )
        return Query(
            keys=(Key("push", f"{provider}\n{subscription_id}"),),
            matching_field="subscription_id",
            resource_id=resource_of(message, db),
            values={"provider": provider, "subscription_id": subscription_id},
        )

    def find(self, lookup: Lookup, query: Query) -> Found:
        return self.find_many(lookup, [query])[0]

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        found = lookup.subscribers(
            "push",
            [q.values["subscription_id"] for q in queries],
            resource_ids=[q.resource_id for q in queries],
            providers=[q.values["provider"] for q in queries],
        )
        return [Found.of(ids, "subscription_id") for ids in found]

    def new_profile(self, query: Query) -> ProfileWrite:
        return new_subscription(
            query, "push", query.values["subscription_id"], provider=query.values["provider"]
        )


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [PushSubMatcher()]
