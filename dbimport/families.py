"""Matcher families: the shapes the built-in modes share, for any plugin to reuse.

- `IdentityMatcher`: one identity value (an e-mail, a phone), searched in the
  profile's own field, in the subscriptions of one channel, or both;
- `EitherIdentityMatcher`: an e-mail and/or a phone, the e-mail's profile first;
- `FieldMatcher`: a declared custom field, of the profile or of its subscriptions.

A mode of a family is an instance with a few arguments: a plugin module of one line.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import normalize
from .actions import Pending, apply_all
from .catalog import Database
from .errors import BadInput
from .fields import FieldDecl, check_value
from .lookup import Lookup, canonical
from .matcher import Found, Key, Matcher, Query
from .profile_data import ProfileWrite, SubscriptionWrite


@dataclass(frozen=True)
class Identity:
    """A kind of identity value: the message key that carries it, how it is
    normalised, where a profile holds it, and the subscription channel it is
    the address of."""

    key: str  # the message key, and the result's matching_field
    kind: str  # the Key kind: values of one kind find each other
    normalise: Callable[..., str]  # (value, *, field) -> canonical, or BadInput
    profile_field: str  # "email" (one value) or "phones" (a list)
    channel: str  # the subscription channel whose address it is

    def of(self, message: Mapping[str, Any]) -> str:
        return self.normalise(message.get(self.key), field=self.key)

    def profile_value(self, value: str) -> Any:
        return [value] if self.profile_field == "phones" else value

    def profiles(self, lookup: Lookup, values: Sequence[str]) -> list[set[str]]:
        if self.profile_field == "phones":
            return lookup.profiles_by_phone(values)
        return lookup.profiles_by_email(values)


EMAIL = Identity("email", "email", normalize.email, profile_field="email", channel="email")
PHONE = Identity("phone", "phone", normalize.phone, profile_field="phones", channel="sms")


def resource_of(message: Mapping[str, Any], db: Database) -> int | None:
    """The message's `resource_id`, checked: 403 unless it is linked to `db`."""
    resource_id = message.get("resource_id")
    if resource_id is None:
        return None
    return db.resource(int(resource_id)).resource_id


def subscription_to(query: Query, channel: str, address: str, provider: str = "") -> ProfileWrite:
    """A new profile's subscription to the query's resource, if it names one."""
    if query.resource_id is None:
        return ProfileWrite()
    return ProfileWrite(subscriptions=[SubscriptionWrite(query.resource_id, channel, provider, address)])


def subscribed(created: ProfileWrite, query: Query, channel: str, address: str, provider: str = "") -> bool:
    """Whether `created` holds a subscription on `channel` with `address` (to the
    query's resource, if it names one)."""
    return any(
        sub.channel == channel and sub.address == address and sub.provider == provider
        and (query.resource_id is None or sub.resource_id == query.resource_id)
        for sub in created.subscriptions
    )


def union(groups: Iterable[Iterable[str]]) -> set[str]:
    found: set[str] = set()
    for group in groups:
        found.update(group)
    return found


class IdentityMatcher(Matcher):
    """One identity value, searched in the profile (`in_profile`), in the
    subscriptions of its channel (`in_subscriptions`), or both. `resource_id`
    narrows the subscriptions searched; a profile created by a mode that searches
    subscriptions only is subscribed to it."""

    def __init__(
        self, *, name: str, identity: Identity, description: str = "", in_profile: bool = True,
        in_subscriptions: bool = True, creates: bool = True,
    ) -> None:
        if not (in_profile or in_subscriptions):
            raise ValueError(f"mode {name!r} searches neither the profile nor subscriptions")
        self.name = name
        self.identity = identity
        self.description = description
        self.in_profile = in_profile
        self.in_subscriptions = in_subscriptions
        self.creates = creates
        self.schema = {"required": [identity.key], "properties": {identity.key: {"type": "string"}}}

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        value = self.identity.of(message)
        return Query(
            keys=(Key(self.identity.kind, value),),
            matching_field=self.identity.key,
            resource_id=resource_of(message, db) if self.in_subscriptions else None,
            values={self.identity.key: value},
        )

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        values = [q.values[self.identity.key] for q in queries]
        sources = []
        if self.in_profile:
            sources.append(self.identity.profiles(lookup, values))
        if self.in_subscriptions:
            sources.append(lookup.subscribers(
                self.identity.channel, values, resource_ids=[q.resource_id for q in queries]
            ))
        return [Found.of(union(found), self.identity.key) for found in zip(*sources)]

    def new_profile(self, query: Query) -> ProfileWrite:
        value = query.values[self.identity.key]
        if self.in_profile:
            return ProfileWrite(values={self.identity.profile_field: self.identity.profile_value(value)})
        return subscription_to(query, self.identity.channel, value)

    def would_find(self, query: Query, created: ProfileWrite) -> bool:
        if self.in_profile:
            return True
        return subscribed(created, query, self.identity.channel, query.values[self.identity.key])


class EitherIdentityMatcher(Matcher):
    """An e-mail and/or a phone: the e-mail's profile first, then the phone's; both
    finding different profiles is ambiguous (409). Searched in the profile
    (`in_profile`) or in subscriptions."""

    def __init__(
        self, *, name: str, description: str = "", in_profile: bool = True,
        identities: tuple[Identity, Identity] = (EMAIL, PHONE),
    ) -> None:
        self.name = name
        self.description = description
        self.in_profile = in_profile
        self.identities = identities
        keys = [i.key for i in identities]
        self.schema = {
            "anyOf": [{"required": [key]} for key in keys],
            "properties": {key: {"type": "string"} for key in keys},
        }

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        given = [i for i in self.identities if message.get(i.key) not in (None, "")]
        if not given:
            keys = " or ".join(i.key for i in self.identities)
            raise BadInput(f"{keys} is required", field=self.identities[0].key)
        values = {i.key: (i.of(message) if message.get(i.key) is not None else None) for i in self.identities}
        return Query(
            keys=tuple(Key(i.kind, value) for i in self.identities if (value := values[i.key]) is not None),
            matching_field=next(i.key for i in self.identities if values[i.key] is not None),
            resource_id=resource_of(message, db),
            values=values,
        )

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        first, second = ([self._look(lookup, i, queries) for i in self.identities])
        return [self._decide(q, a, b) for q, a, b in zip(queries, first, second)]

    def _look(self, lookup: Lookup, identity: Identity, queries: Sequence[Query]) -> list[set[str]]:
        """Each query's profiles by `identity`, for the queries that carry one."""
        present = [i for i, q in enumerate(queries) if q.values[identity.key] is not None]
        values = [queries[i].values[identity.key] for i in present]
        if not values:
            found: list[set[str]] = []
        elif self.in_profile:
            found = identity.profiles(lookup, values)
        else:
            found = lookup.subscribers(identity.channel, values, resource_ids=[queries[i].resource_id for i in present])
        out: list[set[str]] = [set() for _ in queries]
        for i, ids in zip(present, found):
            out[i] = ids
        return out

    def _decide(self, query: Query, first: set[str], second: set[str]) -> Found:
        key_first, key_second = (i.key for i in self.identities)
        if first and second and first != second:
            return Found.of(first | second, key_first)
        if first:
            return Found.of(first, key_first)
        if second:
            return Found.of(second, key_second)
        return Found.of((), query.matching_field)  # none: the key the profile is created by

    def would_find(self, query: Query, created: ProfileWrite) -> bool:
        if self.in_profile:
            return True
        return any(
            subscribed(created, query, i.channel, query.values[i.key])
            for i in self.identities if query.values[i.key] is not None
        )

    def new_profile(self, query: Query) -> ProfileWrite:
        write = ProfileWrite()
        for identity in self.identities:
            value = query.values[identity.key]
            if value is None:
                continue
            if self.in_profile:
                write.values[identity.profile_field] = identity.profile_value(value)
            else:
                write = write.then(subscription_to(query, identity.channel, value))
        return write


# Objects match by containment, which is no identity: they cannot be matched on.
MATCHABLE_TYPES = frozenset({"int", "float", "string", "bool", "date", "list", "ip", "tags"})


class FieldMatcher(Matcher):
    """A declared custom field, given by `field_name` and `field_value`: of the
    profile, or (`of_subscriptions`) of its subscriptions. A tags value finds
    profiles holding all of its tags."""

    def __init__(self, *, name: str, description: str = "", of_subscriptions: bool = False) -> None:
        self.name = name
        self.description = description
        self.of_subscriptions = of_subscriptions

    schema = {
        "required": ["field_name", "field_value"],
        "properties": {"field_name": {"type": "string"}, "field_value": {"type": ["string", "integer"]}},
    }

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        resource_id = resource_of(message, db) if self.of_subscriptions else None
        if self.of_subscriptions:
            declared = db.subscription_fields(resource_id)
            owner = f"resource {resource_id}" if resource_id is not None else (
                f"the resources linked to database {db.db_id}")
        else:
            declared, owner = db.fields, f"database {db.db_id}"
        name, value = self.match_value(message, declared, owner, db)
        kind = "subscription_field" if self.of_subscriptions else "field"
        return Query(
            keys=field_keys(f"{kind}:{name}", value),
            matching_field=name,
            resource_id=resource_id,
            values={"field_name": name, "field_value": value},
        )

    @staticmethod
    def match_value(
        message: Mapping[str, Any], declared: Mapping[str, FieldDecl], owner: str, db: Database
    ) -> tuple[str, Any]:
        """(field name, canonical value) of the match; 400 naming what is wrong."""
        name = str(message["field_name"]).strip()
        decl = declared.get(name)
        if decl is None:
            raise BadInput(f"field_name {name[:64]!r} is not a field declared for {owner}", field="field_name")
        if decl.type not in MATCHABLE_TYPES:
            raise BadInput(f"field_name {name!r} is a {decl.type} field, which cannot be matched on",
                           field="field_name")
        raw = message["field_value"]
        if isinstance(raw, str) and not raw.strip():
            raise BadInput("field_value is empty", field="field_value")
        value = check_value(decl, raw, db.limits, path="field_value")
        if value in ([], ""):
            raise BadInput("field_value is empty", field="field_value")
        return name, value

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        by_name: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_name.setdefault(q.values["field_name"], []).append(i)
        results = [Found.of((), "")] * len(queries)
        for name, indexes in by_name.items():
            values = [queries[i].values["field_value"] for i in indexes]
            if self.of_subscriptions:
                resources = [queries[i].resource_id for i in indexes]
                found = lookup.subscribers_by_field(name, values, resource_ids=resources)
            else:
                found = lookup.profiles_by_field(name, values)
            for i, ids in zip(indexes, found):
                results[i] = Found.of(ids, name)
        return results

    def new_profile(self, query: Query) -> ProfileWrite:
        if self.of_subscriptions:
            return ProfileWrite()
        return ProfileWrite(values={query.values["field_name"]: query.values["field_value"]})

    def would_find(self, query: Query, created: ProfileWrite) -> bool:
        if not self.of_subscriptions:
            return True
        name, wanted = query.values["field_name"], query.values["field_value"]
        for sub in created.subscriptions:
            if query.resource_id is not None and sub.resource_id != query.resource_id:
                continue
            held = sub.values.get("custom_fields", {}).get(name)
            if isinstance(held, Pending):
                held = apply_all(None, held)  # a new subscription's fields start empty
            if isinstance(wanted, list) and isinstance(held, list):
                if set(wanted) <= set(held):
                    return True
            elif held is not None and canonical(held) == canonical(wanted):
                return True
        return False


def field_keys(kind: str, value: Any) -> tuple[Key, ...]:
    """One key per tag of a tags value (a profile holding all tags matches), else one key."""
    if isinstance(value, list):
        return tuple(Key(kind, canonical(tag)) for tag in value)
    return (Key(kind, canonical(value)),)
