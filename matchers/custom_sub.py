"""Matching mode `custom_sub`: a custom field of the database's subscriptions."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.catalog import Database
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Found, Matcher, Query

from ._shared import resource_of
from .custom import FIELD_SCHEMA, field_keys, match_value


class CustomSubMatcher(Matcher):
    name = "custom_sub"
    description = (
        "a custom field of subscriptions, declared by a resource linked to the database "
        "(resource_id narrows the search to that resource)"
    )
    schema = FIELD_SCHEMA

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        resource_id = resource_of(message, db)
        owner = f"resource {resource_id}" if resource_id is not None else (
            f"the resources linked to database {db.db_id}"
        )
        name, value = match_value(message, db.subscription_fields(resource_id), owner)
        return Query(
            keys=field_keys(f"subscription_field:{name}", value),
            matching_field=name,
            resource_id=resource_id,
            values={"field_name": name, "field_value": value},
        )

    def find(self, lookup: Lookup, query: Query) -> Found:
        return self.find_many(lookup, [query])[0]

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        by_name: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_name.setdefault(q.values["field_name"], []).append(i)
        results: list[Found] = [Found.of((), "")] * len(queries)
        for name, indexes in by_name.items():
            found = lookup.subscribers_by_field(
                name,
                [queries[i].values["field_value"] for i in indexes],
                resource_ids=[queries[i].resource_id for i in indexes],
            )
            for i, ids in zip(indexes, found):
                results[i] = Found.of(ids, name)
        return results


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [CustomSubMatcher()]
