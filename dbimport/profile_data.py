"""A message's `data`, checked against the database's declarations into a write.

A field's value may be a field action (see `actions`): in a write, a field then holds
a `Pending` instead of its value.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import actions, normalize
from .catalog import Database, Resource
from .errors import BadInput
from .fields import SYSTEM_FIELDS, FieldDecl, Limits, check_phones, check_value, split_tags

SUBSCRIPTION_STATUSES = ("subscribed", "unsubscribed", "suspended")
DEFAULT_SUBSCRIPTION_STATUS = "subscribed"
_CHANNEL = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SUBSCRIPTION_KEYS = frozenset(
    {"resource_id", "channel", "email", "phone", "provider", "subscription_id", "address",
     "status", "priority", "custom_fields", "cats"}
)


@dataclass(slots=True)
class SubscriptionWrite:
    """One subscription to create or update, identified by `key`."""

    resource_id: int
    channel: str
    provider: str
    address: str
    # Only what the message gave: status, priority, custom_fields (merged), cats.
    values: dict[str, Any] = field(default_factory=dict)
    # Where it came from, for error texts: "data.subscriptions[2]".
    path: str = "resource_id"

    @property
    def key(self) -> tuple[int, str, str, str]:
        return (self.resource_id, self.channel, self.provider, self.address)


@dataclass(slots=True)
class ProfileWrite:
    """What to write into one profile. In `values`, `None` clears a field and a
    `Pending` holds actions on the stored value.

    `values` holds system and custom fields by name, plus `email` and `phones`.
    `left_out` names the invalid subscriptions that `skip_invalid_subscriptions`
    left out, for the result's error_text.
    """

    values: dict[str, Any] = field(default_factory=dict)
    subscriptions: list[SubscriptionWrite] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    def then(self, later: ProfileWrite) -> ProfileWrite:
        """This write followed by `later`, as one write: a later value wins, a later
        action applies to what this write leaves (or, if it leaves nothing, stays
        an action on the stored value)."""
        values = dict(self.values)
        for name, value in later.values.items():
            values[name] = actions.compose(values.get(name), value, known=name in values)
        return ProfileWrite(
            values=values,
            subscriptions=[*self.subscriptions, *later.subscriptions],
            left_out=[*self.left_out, *later.left_out],
        )

    def under(self, defaults: ProfileWrite) -> ProfileWrite:
        """`defaults` (a new profile's match values) with this write on top."""
        return defaults.then(self)


def check_data(
    data: Mapping[str, Any], db: Database, limits: Limits, *, max_subscriptions: int,
    skip_invalid_subscriptions: bool = False,
) -> ProfileWrite:
    """Check every field of `data`; the first bad one is a 400 naming it (a
    subscription of another account's resource is 403). With
    `skip_invalid_subscriptions`, an invalid subscription is left out instead and
    named in `left_out`."""
    write = ProfileWrite()
    for name, value in data.items():
        path = f"data.{name}"
        if name == "email":
            write.values["email"] = actions.parse(
                value, "email", path, limits=limits, removable=False, check=functools.partial(_email, path=path)
            )
        elif name == "phones":
            write.values["phones"] = actions.parse(
                value, "phones", path, limits=limits, check=functools.partial(check_phones, limits=limits, path=path)
            )
        elif name == "subscriptions":
            if actions.is_action(value):
                value = actions.parse(value, "subscriptions", path, limits=limits, check=lambda v: v)
            write.subscriptions, write.left_out = check_subscriptions(
                value, db, limits, max_subscriptions=max_subscriptions, skip_invalid=skip_invalid_subscriptions,
            )
        elif name.startswith("_"):
            decl = SYSTEM_FIELDS.get(name)
            if decl is None:
                raise BadInput(f"{path} is not a system field", field=path)
            write.values[name] = field_value(decl, value, limits, path)
        else:
            decl = db.fields.get(name)
            if decl is None:
                raise BadInput(
                    f"{path} is not a field declared for database {db.db_id}", field=path
                )
            write.values[name] = field_value(decl, value, limits, path)
    return write


def _email(value: Any, *, path: str) -> str | None:
    return None if value is None else normalize.email(value, field=path)


def field_value(decl: FieldDecl, value: Any, limits: Limits, path: str) -> Any:
    """A declared field's value: plain, None, or a `Pending` of its action."""
    return actions.parse(value, decl.type, path, limits=limits,
                         check=lambda v: check_value(decl, v, limits, path=path))


def check_subscriptions(
    value: Any, db: Database, limits: Limits, *, max_subscriptions: int, skip_invalid: bool = False,
) -> tuple[list[SubscriptionWrite], list[str]]:
    """The subscriptions, and what was left out (only with `skip_invalid`)."""
    path = "data.subscriptions"
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise BadInput(f"{path} must be a list of subscriptions", field=path)
    if len(value) > max_subscriptions:
        raise BadInput(f"{path} has more than {max_subscriptions} subscriptions", field=path)
    checked, left_out = [], []
    for i, item in enumerate(value):
        try:
            checked.append(check_subscription(item, db, limits, path=f"{path}[{i}]"))
        except BadInput as exc:
            if not skip_invalid:
                raise
            left_out.append(exc.text)
    return checked, left_out


def check_subscription(item: Any, db: Database, limits: Limits, *, path: str) -> SubscriptionWrite:
    if not isinstance(item, dict):
        raise BadInput(f"{path} must be an object", field=path)
    unknown = sorted(set(item) - _SUBSCRIPTION_KEYS)
    if unknown:
        raise BadInput(f"{path}.{unknown[0]} is not a subscription key", field=f"{path}.{unknown[0]}")
    resource_id = item.get("resource_id")
    if not isinstance(resource_id, int) or isinstance(resource_id, bool):
        raise BadInput(f"{path}.resource_id must be an integer", field=f"{path}.resource_id")
    resource = db.subscription_resource(resource_id, field_name=f"{path}.resource_id")
    channel = item.get("channel")
    if not isinstance(channel, str) or not _CHANNEL.fullmatch(channel):
        raise BadInput(
            f"{path}.channel must be a channel name such as email, sms or push",
            field=f"{path}.channel",
        )
    provider, address = subscription_address(item, channel, path=path)
    return SubscriptionWrite(
        resource_id=resource_id,
        channel=channel,
        provider=provider,
        address=address,
        values=_subscription_values(item, resource, limits, path=path),
        path=path,
    )


def subscription_address(item: Mapping[str, Any], channel: str, *, path: str) -> tuple[str, str]:
    """(provider, address) of a subscription: what identifies it within its channel."""
    if channel == "email":
        return "", normalize.email(item.get("email"), field=f"{path}.email")
    if channel == "sms":
        return "", normalize.phone(item.get("phone"), field=f"{path}.phone")
    if channel == "push":
        provider = normalize.text(item.get("provider"), field=f"{path}.provider")
        return provider, normalize.text(
            item.get("subscription_id"), field=f"{path}.subscription_id", max_bytes=normalize.MAX_IDENTITY_BYTES
        )
    return "", normalize.text(item.get("address"), field=f"{path}.address", max_bytes=normalize.MAX_IDENTITY_BYTES)


def _subscription_values(
    item: Mapping[str, Any], resource: Resource, limits: Limits, *, path: str
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "status" in item:
        if item["status"] not in SUBSCRIPTION_STATUSES:
            raise BadInput(
                f"{path}.status must be one of {', '.join(SUBSCRIPTION_STATUSES)}",
                field=f"{path}.status",
            )
        values["status"] = item["status"]
    if "priority" in item:
        values["priority"] = check_value(
            FieldDecl("priority", "int"), item["priority"], limits, path=f"{path}.priority"
        )
    if "cats" in item:
        try:
            values["cats"] = None if item["cats"] is None else split_tags(item["cats"], limits)
        except ValueError as exc:
            raise BadInput(f"{path}.cats {exc}", field=f"{path}.cats") from None
    if "custom_fields" in item:
        values["custom_fields"] = check_custom_fields(
            item["custom_fields"], resource.fields, limits, path=f"{path}.custom_fields"
        )
    return values


def check_custom_fields(
    value: Any, declared: Mapping[str, FieldDecl], limits: Limits, *, path: str
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInput(f"{path} must be an object", field=path)
    checked: dict[str, Any] = {}
    for name, raw in value.items():
        decl = declared.get(name)
        if decl is None:
            raise BadInput(f"{path}.{name} is not a field declared for the resource", field=f"{path}.{name}")
        checked[name] = field_value(decl, raw, limits, f"{path}.{name}")
    return checked
