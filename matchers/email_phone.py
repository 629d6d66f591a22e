"""Matching mode `email_phone`: the profile's e-mail, then its phones."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.catalog import Database
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.profile_data import ProfileWrite

from ._shared import email_of, phone_of, require_some, resource_of, union

EMAIL_OR_PHONE_SCHEMA = {
    "anyOf": [{"required": ["email"]}, {"required": ["phone"]}],
    "properties": {"email": {"type": "string"}, "phone": {"type": "string"}},
}


def prepare_email_phone(message: Mapping[str, Any], db: Database) -> Query:
    """Either or both of e-mail and phone; a given one must be valid."""
    require_some(message, "email", "phone")
    email = email_of(message) if message.get("email") is not None else None
    phone = phone_of(message) if message.get("phone") is not None else None
    keys = tuple(
        Key(kind, value) for kind, value in (("email", email), ("phone", phone)) if value is not None
    )
    return Query(
        keys=keys,
        matching_field="email" if email is not None else "phone",
        resource_id=resource_of(message, db),
        values={"email": email, "phone": phone},
    )


def decide(by_email: set[str], by_phone: set[str]) -> Found:
    """The e-mail's profile first, then the phone's; both finding others is a 409."""
    if by_email and by_phone and by_email != by_phone:
        return Found.of(union(by_email, by_phone), "email")
    if by_email:
        return Found.of(by_email, "email")
    return Found.of(by_phone, "phone")


def aligned(values: Sequence[str | None], look: Any) -> list[set[str]]:
    """`look` over the non-None values, realigned to `values`."""
    present = [i for i, v in enumerate(values) if v is not None]
    found = look([values[i] for i in present]) if present else []
    out: list[set[str]] = [set() for _ in values]
    for i, ids in zip(present, found):
        out[i] = ids
    return out


class EmailPhoneMatcher(Matcher):
    name = "email_phone"
    description = "the profile's email, then its phones; both finding different profiles is 409"
    schema = EMAIL_OR_PHONE_SCHEMA

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        return prepare_email_phone(message, db)

    def find(self, lookup: Lookup, query: Query) -> Found:
        return self.find_many(lookup, [query])[0]

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        by_email = aligned([q.values["email"] for q in queries], lookup.profiles_by_email)
        by_phone = aligned([q.values["phone"] for q in queries], lookup.profiles_by_phone)
        return [
            created_as(decide(e, p), q) for q, e, p in zip(queries, by_email, by_phone)
        ]

    def new_profile(self, query: Query) -> ProfileWrite:
        values: dict[str, Any] = {}
        if query.values["email"] is not None:
            values["email"] = query.values["email"]
        if query.values["phone"] is not None:
            values["phones"] = [query.values["phone"]]
        return ProfileWrite(values=values)


def created_as(found: Found, query: Query) -> Found:
    """Nothing found: report the field the new profile is created by."""
    if found.profile_ids:
        return found
    return Found.of((), query.matching_field)


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [EmailPhoneMatcher()]
