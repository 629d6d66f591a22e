"""Matching mode `push_sub`: push subscriptions, by provider and subscription id."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.api import (
    MAX_IDENTITY_BYTES,
    Database,
    Found,
    Key,
    Lookup,
    Matcher,
    ProfileWrite,
    Query,
    normalize_text,
    resource_of,
    subscribed,
    subscription_to,
)


class PushSubMatcher(Matcher):
    name = "push_sub"
    description = "push subscriptions by provider and subscription_id (a new profile is subscribed to resource_id)"
    schema = {
        "required": ["provider", "subscription_id"],
        "properties": {"provider": {"type": "string"}, "subscription_id": {"type": "string"}},
    }

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        provider = normalize_text(message["provider"], field="provider")
        device = normalize_text(message["subscription_id"], field="subscription_id", max_bytes=MAX_IDENTITY_BYTES)
        return Query(
            keys=(Key("push", f"{provider}\n{device}"),),
            matching_field="subscription_id",
            resource_id=resource_of(message, db),
            values={"provider": provider, "subscription_id": device},
        )

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        found = lookup.subscribers(
            "push", [q.values["subscription_id"] for q in queries],
            resource_ids=[q.resource_id for q in queries], providers=[q.values["provider"] for q in queries],
        )
        return [Found.of(ids, "subscription_id") for ids in found]

    def would_find(self, query: Query, created: ProfileWrite) -> bool:
        return subscribed(created, query, "push", query.values["subscription_id"], query.values["provider"])

    def new_profile(self, query: Query) -> ProfileWrite:
        return subscription_to(query, "push", query.values["subscription_id"], provider=query.values["provider"])


plugin = PushSubMatcher()
