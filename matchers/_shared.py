"""Helpers the built-in matchers share; any plugin may use them too."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dbimport import normalize
from dbimport.catalog import Database
from dbimport.errors import BadInput
from dbimport.matcher import Query
from dbimport.profile_data import ProfileWrite, SubscriptionWrite


def email_of(message: Mapping[str, Any]) -> str:
    return normalize.email(message.get("email"), field="email")


def phone_of(message: Mapping[str, Any]) -> str:
    return normalize.phone(message.get("phone"), field="phone")


def resource_of(message: Mapping[str, Any], db: Database) -> int | None:
    """The message's `resource_id`, checked: 403 unless it is linked to `db`."""
    resource_id = message.get("resource_id")
    if resource_id is None:
        return None
    return db.resource(int(resource_id)).resource_id


def new_subscription(query: Query, channel: str, address: str, provider: str = "") -> ProfileWrite:
    """A new profile's subscription to the query's resource, if it names one."""
    if query.resource_id is None:
        return ProfileWrite()
    return ProfileWrite(
        subscriptions=[SubscriptionWrite(query.resource_id, channel, provider, address)]
    )


def union(*groups: Iterable[str]) -> frozenset[str]:
    found: set[str] = set()
    for group in groups:
        found.update(group)
    return frozenset(found)


def require_some(message: Mapping[str, Any], *names: str) -> None:
    if not any(message.get(name) not in (None, "") for name in names):
        raise BadInput(f"{' or '.join(names)} is required", field=names[0])
