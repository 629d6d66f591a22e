"""The rows a segment writes: staged per table, sent as one pipelined round trip.

Each table's rows go to the server as one JSON document (a list of rows),
serialised in one pass, and the statement unpacks it: one parameter a
statement rather than a column array of per-row values, each of which the
driver would encode on its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import events as ev
from .actions import Pending, apply_all, compose
from .events import TriggerEvent
from .profile_data import DEFAULT_SUBSCRIPTION_STATUS, ProfileWrite, SubscriptionWrite

PROFILE_COLUMNS = ("email", "phones")
SubscriptionKey = tuple[int, str, str, str]


@dataclass
class Rows:
    """The rows one segment writes, gathered so that each table gets one statement."""

    new_profiles: list[tuple[str, str | None, list[str], dict[str, Any]]] = field(default_factory=list)
    profile_updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    new_subscriptions: dict[SubscriptionKey, dict[str, Any]] = field(default_factory=dict)
    subscription_updates: dict[SubscriptionKey, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)

    def add_event(self, profile_id: str, kind: str, feedback_id: str, payload: dict[str, Any]) -> None:
        self.events.append((profile_id, kind, feedback_id, payload))


def payload(write: ProfileWrite) -> dict[str, Any]:
    """A profile event's payload: the fields written (an action as the message gave
    it), and the subscriptions' keys."""
    fields = {k: v.as_payload() if isinstance(v, Pending) else v for k, v in write.values.items()}
    payload: dict[str, Any] = {"fields": fields}
    if write.subscriptions:
        payload["subscriptions"] = [
            {"resource_id": s.resource_id, "channel": s.channel, "provider": s.provider, "address": s.address}
            for s in write.subscriptions
        ]
    return payload


def stage_profile(rows: Rows, profile_id: str, merged: ProfileWrite, *, new: bool) -> None:
    """A new profile's row, or an update that sets, clears, keeps fields and applies
    actions to the stored values (`ops`, in the UPDATE itself)."""
    values = merged.values
    if new:  # a new profile starts from empty fields: its actions apply here
        values = {k: apply_all(None, v) if isinstance(v, Pending) else v for k, v in values.items()}
    fields = {k: v for k, v in values.items() if k not in PROFILE_COLUMNS}
    if new:
        rows.new_profiles.append((
            profile_id,
            values.get("email"),
            list(values.get("phones") or []),
            {k: v for k, v in fields.items() if v is not None},
        ))
        return
    plain = {k: v for k, v in fields.items() if not isinstance(v, Pending)}
    doc: dict[str, Any] = {
        "set": {k: v for k, v in plain.items() if v is not None},
        "clear": [k for k, v in plain.items() if v is None],
    }
    ops = {k: v.as_json() for k, v in fields.items() if isinstance(v, Pending)}
    if ops:
        doc["ops"] = ops
    for column in PROFILE_COLUMNS:
        if column not in values:
            continue
        if isinstance(values[column], Pending):
            doc[f"{column}_ops"] = values[column].as_json()
        else:
            doc[column] = values[column]
    rows.profile_updates.append((profile_id, doc))


def stage_subscription(
    rows: Rows, statuses: dict[SubscriptionKey, str], profile_id: str,
    sub: SubscriptionWrite, *, feedback_id: str, record: bool,
) -> None:
    """Merge `sub` into the segment's subscription rows; record its status events.

    `statuses` holds each subscription's status as the writes so far leave it.
    """
    key = sub.key
    before = statuses.get(key)
    is_new = before is None and key not in rows.new_subscriptions
    staged = rows.new_subscriptions if (is_new or key in rows.new_subscriptions) else rows.subscription_updates
    entry = staged.setdefault(key, {"profile_id": profile_id, "custom_fields": {}})
    for name, value in sub.values.items():
        if name == "custom_fields":
            custom = entry["custom_fields"]
            for field_name, field_value in value.items():
                # A new subscription starts from empty custom fields; an update's
                # actions apply to the stored ones.
                known = staged is rows.new_subscriptions or field_name in custom
                custom[field_name] = compose(custom.get(field_name), field_value, known=known)
        else:
            entry[name] = value
    if is_new:
        entry.setdefault("status", DEFAULT_SUBSCRIPTION_STATUS)
    after = str(entry.get("status", before))
    statuses[key] = after
    if not record:
        return
    address = {"resource_id": key[0], "channel": key[1], "provider": key[2], "address": key[3]}
    if before is None and after == DEFAULT_SUBSCRIPTION_STATUS:
        rows.add_event(profile_id, ev.SUBSCRIBED, feedback_id, {**address, "status": after})
    elif before != after:
        change = {**address, "from": before, "to": after}
        rows.add_event(profile_id, ev.SUBSCRIPTION_STATUS_CHANGED, feedback_id, change)


def execute(conn: psycopg.Connection[Any], db_id: int, rows: Rows) -> list[TriggerEvent]:
    """One statement per table, pipelined: one round trip. Returns the events written."""
    with conn.pipeline():
        if rows.new_profiles:
            conn.execute(
                "INSERT INTO profiles (db_id, profile_id, email, phones, fields) "
                "SELECT %s, r->>0, r->>1, ARRAY(SELECT jsonb_array_elements_text(r->2)), r->3 "
                "FROM jsonb_array_elements(%b::jsonb) AS r",
                (db_id, Jsonb(rows.new_profiles)),
            )
        if rows.profile_updates:
            # In profile order: two workers updating the same profiles lock them in one order.
            conn.execute(_UPDATE_PROFILES, (Jsonb(sorted(rows.profile_updates, key=lambda row: row[0])), db_id))
        if rows.new_subscriptions:
            conn.execute(_INSERT_SUBSCRIPTIONS, (db_id, *subscription_columns(rows.new_subscriptions, new=True)))
        if rows.subscription_updates:
            conn.execute(_UPDATE_SUBSCRIPTIONS, (*subscription_columns(rows.subscription_updates, new=False), db_id))
        if rows.events:
            conn.execute(
                "INSERT INTO events (db_id, profile_id, kind, feedback_id, payload) "
                "SELECT %s, r->>0, r->>1, r->>2, r->3 FROM jsonb_array_elements(%b::jsonb) AS r",
                (db_id, Jsonb(rows.events)),
            )
    return [
        TriggerEvent(db_id=db_id, profile_id=i, kind=k, feedback_id=f, payload=p)
        for i, k, f, p in rows.events
    ]


def subscription_columns(staged: dict[SubscriptionKey, dict[str, Any]], *, new: bool) -> list[list[Any]]:
    keys = sorted(staged)
    columns: list[list[Any]] = [[k[i] for k in keys] for i in range(4)]
    if new:
        entries = [staged[k] for k in keys]
        columns += [
            [e["profile_id"] for e in entries],
            [e["status"] for e in entries],
            [e.get("priority") for e in entries],
            [Jsonb({n: v for n, v in e["custom_fields"].items() if v is not None}) for e in entries],
            [Jsonb(e.get("cats") or []) for e in entries],
        ]
    else:
        docs = []
        for k in keys:
            entry = dict(staged[k])
            custom = entry.pop("custom_fields")
            entry.pop("profile_id")
            entry["cf_set"] = {n: v for n, v in custom.items() if v is not None and not isinstance(v, Pending)}
            entry["cf_clear"] = [n for n, v in custom.items() if v is None]
            cf_ops = {n: v.as_json() for n, v in custom.items() if isinstance(v, Pending)}
            if cf_ops:
                entry["cf_ops"] = cf_ops
            docs.append(Jsonb(entry))
        columns.append(docs)
    return columns


_UPDATE_PROFILES = """
UPDATE profiles AS p SET
    email = CASE WHEN u.doc ? 'email' THEN u.doc->>'email' ELSE p.email END,
    phones = CASE WHEN u.doc ? 'phones_ops' THEN dbimport_apply_phones(p.phones, u.doc->'phones_ops')
                  WHEN NOT u.doc ? 'phones' THEN p.phones
                  WHEN jsonb_typeof(u.doc->'phones') = 'array'
                  THEN ARRAY(SELECT jsonb_array_elements_text(u.doc->'phones'))
                  ELSE '{}' END,
    fields = CASE WHEN u.doc ? 'ops'
                  THEN dbimport_apply_fields((p.fields || (u.doc->'set'))
                       - ARRAY(SELECT jsonb_array_elements_text(u.doc->'clear')), u.doc->'ops')
                  ELSE (p.fields || (u.doc->'set')) - ARRAY(SELECT jsonb_array_elements_text(u.doc->'clear'))
             END,
    updated_at = now()
FROM (SELECT r->>0 AS profile_id, r->1 AS doc FROM jsonb_array_elements(%b::jsonb) AS r) AS u
WHERE p.db_id = %s AND p.profile_id = u.profile_id
"""

_INSERT_SUBSCRIPTIONS = """
INSERT INTO subscriptions (db_id, resource_id, channel, provider, address, profile_id,
                           status, priority, custom_fields, cats)
SELECT %s, v.resource_id, v.channel, v.provider, v.address, v.profile_id, v.status, v.priority,
       v.custom_fields, ARRAY(SELECT jsonb_array_elements_text(v.cats))
FROM unnest(%b::int[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[],
            %b::jsonb[], %b::jsonb[])
     AS v(resource_id, channel, provider, address, profile_id, status, priority, custom_fields, cats)
"""

_UPDATE_SUBSCRIPTIONS = """
UPDATE subscriptions AS s SET
    status = coalesce(u.doc->>'status', s.status),
    priority = CASE WHEN u.doc ? 'priority' THEN (u.doc->>'priority')::bigint ELSE s.priority END,
    custom_fields = CASE WHEN u.doc ? 'cf_ops'
                         THEN dbimport_apply_fields((s.custom_fields || (u.doc->'cf_set'))
                              - ARRAY(SELECT jsonb_array_elements_text(u.doc->'cf_clear')), u.doc->'cf_ops')
                         ELSE (s.custom_fields || (u.doc->'cf_set'))
                              - ARRAY(SELECT jsonb_array_elements_text(u.doc->'cf_clear'))
                    END,
    cats = CASE WHEN NOT u.doc ? 'cats' THEN s.cats
                WHEN jsonb_typeof(u.doc->'cats') = 'array'
                THEN ARRAY(SELECT jsonb_array_elements_text(u.doc->'cats'))
                ELSE '{}' END,
    updated_at = now()
FROM unnest(%b::int[], %b::text[], %b::text[], %b::text[], %b::jsonb[])
     AS u(resource_id, channel, provider, address, doc)
WHERE s.db_id = %s AND s.resource_id = u.resource_id AND s.channel = u.channel
  AND s.provider = u.provider AND s.address = u.address
"""
