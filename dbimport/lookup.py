"""Look-ups for matchers: profiles and subscriptions of one database, by value.

Every method takes a sequence of values and returns, in the same order, the
set of profile ids each value finds: one round trip for any number of
values. A single-message matcher passes a one-item list.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

# GIN look-ups run as one LATERAL probe per value, and db_id is checked outside it:
# OFFSET 0 keeps the planner from flattening the probe into a join or pushing db_id
# into it. Otherwise, on a growing table with stale statistics, it pairs each probe
# with a scan of every row of the database (by the db_id-leading btree indexes).

# A custom field's values, by the expression the index of custom fields is built on
# (migration 0003): the same expression, or the index is not used.
PROFILES_BY_FIELD = (
    "SELECT v.i, p.profile_id FROM unnest(%b::jsonb[]) WITH ORDINALITY AS v(doc, i) "
    "CROSS JOIN LATERAL (SELECT db_id, profile_id FROM profiles "
    "WHERE dbimport_custom_fields(fields) @> v.doc OFFSET 0) p WHERE p.db_id = %s"
)


class Lookup:
    """Reads the profile store for one database inside the batch's transaction.

    `connection` is there for plugins that keep tables of their own; use it
    only to read, with `db_id` in every query.
    """

    def __init__(self, connection: psycopg.Connection[Any], db_id: int) -> None:
        self.connection = connection
        self.db_id = db_id

    def _aligned(self, count: int, query: str, params: Sequence[Any]) -> list[set[str]]:
        found: list[set[str]] = [set() for _ in range(count)]
        if count:
            for ordinal, profile_id in self.connection.execute(query.encode(), params):
                found[ordinal - 1].add(profile_id)
        return found

    def profiles_by_id(self, profile_ids: Sequence[str]) -> list[set[str]]:
        return self._aligned(
            len(profile_ids),
            "SELECT v.i, p.profile_id FROM unnest(%b::text[]) WITH ORDINALITY AS v(id, i) "
            "JOIN profiles p ON p.db_id = %s::int AND p.profile_id = v.id",
            (list(profile_ids), self.db_id),
        )

    def profiles_by_email(self, emails: Sequence[str]) -> list[set[str]]:
        """Profiles whose `email` is each (normalised) address."""
        return self._aligned(
            len(emails),
            "SELECT v.i, p.profile_id FROM unnest(%b::text[]) WITH ORDINALITY AS v(email, i) "
            "JOIN profiles p ON p.db_id = %s::int AND p.email = v.email",
            (list(emails), self.db_id),
        )

    def profiles_by_phone(self, phones: Sequence[str]) -> list[set[str]]:
        """Profiles whose `phones` hold each (normalised) phone."""
        return self._aligned(
            len(phones),
            "SELECT v.i, p.profile_id FROM unnest(%b::text[]) WITH ORDINALITY AS v(phone, i) "
            "CROSS JOIN LATERAL (SELECT db_id, profile_id FROM profiles "
            "WHERE phones @> ARRAY[v.phone] OFFSET 0) p WHERE p.db_id = %s",
            (list(phones), self.db_id),
        )

    def profiles_by_field(self, name: str, values: Sequence[Any]) -> list[set[str]]:
        """Profiles whose custom field `name` holds each value.

        A list value (tags) finds profiles holding all of its items.
        """
        docs = [Jsonb({name: value}) for value in values]
        return self._aligned(len(docs), PROFILES_BY_FIELD, (docs, self.db_id))

    def subscribers(
        self,
        channel: str,
        addresses: Sequence[str],
        *,
        resource_ids: Sequence[int | None] | None = None,
        providers: Sequence[str] | None = None,
    ) -> list[set[str]]:
        """Owners of the subscriptions with each address on `channel`.

        `resource_ids[i]`, when not None, limits the i-th search to that
        resource; `providers[i]` is the push provider (else "").
        """
        n = len(addresses)
        return self._aligned(
            n,
            "SELECT v.i, s.profile_id FROM unnest(%b::text[], %b::int[], %b::text[]) "
            "WITH ORDINALITY AS v(address, resource_id, provider, i) "
            "JOIN subscriptions s ON s.db_id = %s::int AND s.channel = %s AND s.address = v.address "
            "AND s.provider = v.provider AND (v.resource_id IS NULL OR s.resource_id = v.resource_id)",
            (
                list(addresses),
                list(resource_ids) if resource_ids is not None else [None] * n,
                list(providers) if providers is not None else [""] * n,
                self.db_id,
                channel,
            ),
        )

    def subscribers_by_field(
        self, name: str, values: Sequence[Any], *, resource_ids: Sequence[int | None] | None = None
    ) -> list[set[str]]:
        """Owners of subscriptions whose custom field `name` holds each value."""
        n = len(values)
        return self._aligned(
            n,
            "SELECT v.i, s.profile_id FROM unnest(%b::jsonb[], %b::int[]) "
            "WITH ORDINALITY AS v(doc, resource_id, i) "
            "CROSS JOIN LATERAL (SELECT db_id, resource_id, profile_id FROM subscriptions "
            "WHERE custom_fields @> v.doc OFFSET 0) s "
            "WHERE s.db_id = %s AND (v.resource_id IS NULL OR s.resource_id = v.resource_id)",
            (
                [Jsonb({name: value}) for value in values],
                list(resource_ids) if resource_ids is not None else [None] * n,
                self.db_id,
            ),
        )


def canonical(value: Any) -> str:
    """A value's canonical text, for keys: sorted JSON, tags sorted."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = sorted(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
