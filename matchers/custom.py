"""Matching mode `custom`: a declared custom field of the database."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.catalog import Database, FieldDecl
from dbimport.errors import BadInput
from dbimport.fields import Limits, check_value
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup, canonical
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.profile_data import ProfileWrite

# Objects match by containment, which is no identity: they cannot be matched on.
MATCHABLE_TYPES = frozenset({"int", "float", "string", "bool", "date", "list", "ip", "tags"})
FIELD_SCHEMA = {
    "required": ["field_name", "field_value"],
    "properties": {
        "field_name": {"type": "string"},
        "field_value": {"type": ["string", "integer"]},
    },
}


def match_value(message: Mapping[str, Any], declared: Mapping[str, FieldDecl], owner: str) -> tuple[str, Any]:
    """(field name, canonical value) of a custom-field match; 400 naming what is wrong."""
    name = str(message["field_name"]).strip()
    decl = declared.get(name)
    if decl is None:
        raise BadInput(f"field_name {name[:64]!r} is not a field declared for {owner}", field="field_name")
    if decl.type not in MATCHABLE_TYPES:
        raise BadInput(f"field_name {name!r} is a {decl.type} field, which cannot be matched on", field="field_name")
    raw = message["field_value"]
    if isinstance(raw, str) and not raw.strip():
        raise BadInput("field_value is empty", field="field_value")
    value = check_value(decl, raw, Limits(), path="field_value")
    if value in ([], ""):
        raise BadInput("field_value is empty", field="field_value")
    return name, value


def field_keys(kind: str, value: Any) -> tuple[Key, ...]:
    """One key per tag of a tags value (a profile holding all tags matches), else one key."""
    if isinstance(value, list):
        return tuple(Key(kind, canonical(tag)) for tag in value)
    return (Key(kind, canonical(value)),)


class CustomMatcher(Matcher):
    name = "custom"
    description = "a declared custom field of the database (tags: the profile holds all given tags)"
    schema = FIELD_SCHEMA

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        name, value = match_value(message, db.fields, f"database {db.db_id}")
        return Query(
            keys=field_keys(f"field:{name}", value),
            matching_field=name,
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
            found = lookup.profiles_by_field(name, [queries[i].values["field_value"] for i in indexes])
            for i, ids in zip(indexes, found):
                results[i] = Found.of(ids, name)
        return results

    def new_profile(self, query: Query) -> ProfileWrite:
        return ProfileWrite(values={query.values["field_name"]: query.values["field_value"]})


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [CustomMatcher()]
