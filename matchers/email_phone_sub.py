"""Matching mode `email_phone_sub`: e-mail subscriptions, then SMS subscriptions."""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.catalog import Database
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Found, Matcher, Query
from dbimport.profile_data import ProfileWrite

from .email_phone import EMAIL_OR_PHONE_SCHEMA, created_as, aligned, decide, prepare_email_phone
from ._shared import new_subscription


class EmailPhoneSubMatcher(Matcher):
    name = "email_phone_sub"
    description = (
        "e-mail subscriptions, then SMS subscriptions; both finding different profiles is 409 "
        "(a new profile is subscribed to resource_id)"
    )
    schema = EMAIL_OR_PHONE_SCHEMA

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        return prepare_email_phone(message, db)

    def find(self, lookup: Lookup, query: Query) -> Found:
        return self.find_many(lookup, [query])[0]

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        resources = [q.resource_id for q in queries]
        by_email = self._subscribers(lookup, "email", [q.values["email"] for q in queries], resources)
        by_phone = self._subscribers(lookup, "sms", [q.values["phone"] for q in queries], resources)
        return [created_as(decide(e, p), q) for q, e, p in zip(queries, by_email, by_phone)]

    @staticmethod
    def _subscribers(
        lookup: Lookup, channel: str, values: Sequence[str | None], resources: Sequence[int | None]
    ) -> list[set[str]]:
        present = [i for i, v in enumerate(values) if v is not None]
        look = functools.partial(
            lookup.subscribers, channel, resource_ids=[resources[i] for i in present]
        )
        return aligned(values, look)

    def new_profile(self, query: Query) -> ProfileWrite:
        write = ProfileWrite()
        if query.values["email"] is not None:
            write = write.then(new_subscription(query, "email", query.values["email"]))
        if query.values["phone"] is not None:
            write = write.then(new_subscription(query, "sms", query.values["phone"]))
        return write


@hookimpl
def dbimport_register_matchers() -> list[Matcher]:
    return [EmailPhoneSubMatcher()]
