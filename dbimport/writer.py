"""The batch write: match and write many messages in one transaction, in order.

A batch is cut into rounds. Two messages that touch a common identity value
(one matches on an e-mail the other matches on or writes) go to different
rounds, in their order; the rest of a round is looked up and written together,
a few statements for the whole round. Before it creates a profile, a round
locks a claim row per match value, then looks again: a concurrent worker that
created the profile first has committed by then, and is found.
"""
from __future__ import annotations

import hashlib
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import events as ev
from .catalog import Database
from .errors import BadInput, Conflict, NotFound
from .events import TriggerEvent
from .lookup import Lookup, canonical
from .matcher import Found, Key, Matcher, Query
from .message import Envelope
from .profile_data import DEFAULT_SUBSCRIPTION_STATUS, ProfileWrite, SubscriptionWrite
from .results import Result

PROFILE_COLUMNS = ("email", "phones")
_SUBSCRIPTION_KINDS = {"email": "email", "sms": "phone"}


@dataclass(slots=True)
class Job:
    """One valid message on its way to the store."""

    index: int
    envelope: Envelope
    db: Database
    matcher: Matcher
    query: Query
    write: ProfileWrite
    message_key: bytes
    # Redelivered, or retried after an unknown commit outcome: maybe applied.
    maybe_applied: bool = False

    @property
    def feedback_id(self) -> str:
        return self.envelope.feedback_id


@dataclass
class BatchOutcome:
    """What a committed batch answers, by job index, and the events it recorded."""

    results: dict[int, Result] = field(default_factory=dict)
    replayed: set[int] = field(default_factory=set)
    events: list[TriggerEvent] = field(default_factory=list)
    created: int = 0
    updated: int = 0


def apply_batch(conn: psycopg.Connection[Any], jobs: Sequence[Job]) -> BatchOutcome:
    """Match and write `jobs` inside the caller's transaction."""
    outcome = BatchOutcome()
    by_db: dict[int, list[Job]] = defaultdict(list)
    for job in jobs:
        by_db[job.db.db_id].append(job)
    for db_id, db_jobs in by_db.items():
        fresh = _replay_logged(conn, db_id, db_jobs, outcome)
        logged: list[tuple[bytes, Result]] = []
        for round_jobs in rounds(fresh):
            _apply_round(conn, db_id, round_jobs, outcome)
            logged.extend((job.message_key, outcome.results[job.index]) for job in round_jobs)
        _log_results(conn, db_id, logged)
    return outcome


# --- ordering ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Touch:
    """The identity values a job reads (matches on), writes, and may remove (kinds)."""

    reads: frozenset[Key]
    writes: frozenset[Key]
    removes: frozenset[str]


# Kinds whose values several profiles may share: writing the same value twice
# needs no order. Every other kind is unique (a profile e-mail, a subscription).
_SHARED_KINDS = ("field:", "subscription_field:")


def touch(job: Job) -> Touch:
    reads = set(job.query.keys)
    writes: set[Key] = set()
    removes: set[str] = set()
    if job.matcher.creates and not job.envelope.update_only:
        writes.update(reads)  # a created profile holds its match values
    for kind, value in _written_identities(job.write):
        exact = None if value is None else Key(kind, value)
        if exact is not None:
            writes.add(exact)
        if exact not in reads:
            removes.add(kind)  # it replaces the old value, whatever it was
    for sub in job.write.subscriptions:
        writes.add(subscription_key(sub))
        for name, value in sub.values.get("custom_fields", {}).items():
            for kind, canon in _field_identities(f"subscription_field:{name}", value):
                exact = None if canon is None else Key(kind, canon)
                if exact is not None:
                    writes.add(exact)
                if exact not in reads:
                    removes.add(kind)
    return Touch(frozenset(reads), frozenset(writes), frozenset(removes))


def _written_identities(write: ProfileWrite) -> Iterable[tuple[str, str | None]]:
    """(kind, canonical value) of each identity field a write sets; None clears it.

    System fields (`_fname`...) are no identity: no matcher searches them.
    """
    for name, value in write.values.items():
        if name == "email":
            yield "email", value
        elif name == "phones":
            if not value:
                yield "phone", None
            for phone in value or ():
                yield "phone", phone
        elif not name.startswith("_"):
            yield from _field_identities(f"field:{name}", value)


def _field_identities(kind: str, value: Any) -> Iterable[tuple[str, str | None]]:
    """A custom field's identity values: one per tag of a tags value (as `custom` keys them)."""
    if value is None or value == []:
        yield kind, None
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        for tag in value:
            yield kind, canonical(tag)
    else:
        yield kind, canonical(value)


def subscription_key(sub: SubscriptionWrite) -> Key:
    if sub.channel == "push":
        return Key("push", f"{sub.provider}\n{sub.address}")
    return Key(_SUBSCRIPTION_KINDS.get(sub.channel, f"subscription:{sub.channel}"), sub.address)


def rounds(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs grouped so that each comes after every earlier job whose effect it must see.

    A later job waits for an earlier one that wrote, removed or matched on a
    value it matches on, and, for unique values, that wrote or removed a value
    it writes. Within a round every look-up runs before every write, which is
    what sequential order gives for the rest.
    """
    read_level: dict[Key, int] = {}
    write_level: dict[Key, int] = {}
    remove_level: dict[str, int] = {}
    grouped: list[list[Job]] = []
    for job in jobs:
        t = touch(job)
        level = 0
        for key in t.reads:
            level = max(
                level,
                read_level.get(key, -1) + 1,
                write_level.get(key, -1) + 1,
                remove_level.get(key.kind, -1) + 1,
            )
        for key in t.writes:
            if not key.kind.startswith(_SHARED_KINDS):
                level = max(level, write_level.get(key, -1) + 1, remove_level.get(key.kind, -1) + 1)
        for key in t.reads:
            read_level[key] = max(read_level.get(key, -1), level)
        for key in t.writes:
            write_level[key] = max(write_level.get(key, -1), level)
        for kind in t.removes:
            remove_level[kind] = max(remove_level.get(kind, -1), level)
        if level == len(grouped):
            grouped.append([])
        grouped[level].append(job)
    return grouped


# --- one round -----------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    """A profile a round writes: the jobs that write it, in order."""

    profile_id: str
    new: bool
    jobs: list[Job] = field(default_factory=list)
    seed: ProfileWrite | None = None


def _apply_round(conn: psycopg.Connection[Any], db_id: int, jobs: list[Job], outcome: BatchOutcome) -> None:
    lookup = Lookup(conn, db_id)
    found = _find(lookup, jobs)
    targets: dict[str, _Target] = {}
    to_create: list[Job] = []
    for job in jobs:
        decision = _decide(job, found[job.index])
        if isinstance(decision, BadInput):
            outcome.results[job.index] = _failed(job, decision, found[job.index])
        elif decision is None:
            to_create.append(job)
        else:
            targets.setdefault(decision, _Target(decision, new=False)).jobs.append(job)

    if to_create:
        _claim(conn, db_id, [key for job in to_create for key in job.query.keys])
        again = _find(lookup, to_create)
        for job in to_create:
            found[job.index] = again[job.index]
            decision = _decide(job, again[job.index])
            if isinstance(decision, BadInput):
                outcome.results[job.index] = _failed(job, decision, again[job.index])
            elif decision is None:
                new_id = new_profile_id()
                targets[new_id] = _Target(new_id, new=True, jobs=[job], seed=job.matcher.new_profile(job.query))
            else:
                targets.setdefault(decision, _Target(decision, new=False)).jobs.append(job)

    for target in targets.values():
        target.jobs.sort(key=lambda j: j.index)
    subscriptions = _lock_subscriptions(conn, db_id, targets)
    _refuse_taken_values(conn, db_id, targets, found, subscriptions, outcome)
    _write(conn, db_id, targets, found, subscriptions, outcome)


def _find(lookup: Lookup, jobs: Sequence[Job]) -> dict[int, Found]:
    by_matcher: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_matcher[job.matcher.name].append(job)
    found: dict[int, Found] = {}
    for group in by_matcher.values():
        matcher = group[0].matcher
        results = matcher.find_many(lookup, [job.query for job in group])
        if len(results) != len(group):
            raise RuntimeError(
                f"matcher {matcher.name!r} returned {len(results)} results for {len(group)} queries"
            )
        for job, result in zip(group, results):
            found[job.index] = result
    return found


def _decide(job: Job, found: Found) -> str | BadInput | None:
    """The profile to write, an error, or None: create one."""
    ids = found.profile_ids
    if len(ids) > 1:
        return Conflict(
            f"{found.matching_field}: {len(ids)} profiles match; the match is ambiguous",
            field=found.matching_field,
        )
    if ids:
        return next(iter(ids))
    if not job.matcher.creates:
        return NotFound(f"{found.matching_field}: no profile matches", field=found.matching_field)
    if job.envelope.update_only:
        return NotFound(
            f"{found.matching_field}: no profile matches and update_only is set",
            field=found.matching_field,
        )
    return None


def _failed(job: Job, exc: BadInput, found: Found) -> Result:
    return Result.failed(exc, feedback_id=job.feedback_id, matching_field=found.matching_field)


def claim_key(key: Key) -> bytes:
    return hashlib.blake2b(f"{key.kind}\n{key.value}".encode(), digest_size=16).digest()


def _claim(conn: psycopg.Connection[Any], db_id: int, keys: Iterable[Key]) -> None:
    """Lock a claim row per key, in one global order so that workers never deadlock."""
    claim_keys = sorted({claim_key(key) for key in keys})
    conn.execute(
        "INSERT INTO match_claims (db_id, claim_key) SELECT %s, k FROM unnest(%b::bytea[]) AS k "
        "ON CONFLICT (db_id, claim_key) DO UPDATE SET claimed_at = now()",
        (db_id, claim_keys),
    )


def new_profile_id() -> str:
    return secrets.token_hex(12)


SubscriptionKey = tuple[int, str, str, str]


@dataclass(slots=True)
class _StoredSubscription:
    profile_id: str
    status: str


def _subscription_writes(target: _Target, job: Job | None = None) -> list[SubscriptionWrite]:
    if job is not None:
        return list(job.write.subscriptions)
    seed = list(target.seed.subscriptions) if target.seed else []
    return seed + [sub for j in target.jobs for sub in j.write.subscriptions]


def _lock_subscriptions(
    conn: psycopg.Connection[Any], db_id: int, targets: dict[str, _Target]
) -> dict[SubscriptionKey, _StoredSubscription]:
    """The stored subscriptions the round writes, locked, in key order."""
    keys = sorted({sub.key for t in targets.values() for sub in _subscription_writes(t)})
    if not keys:
        return {}
    res, chan, prov, addr = (list(col) for col in zip(*keys))
    rows = conn.execute(
        "SELECT s.resource_id, s.channel, s.provider, s.address, s.profile_id, s.status "
        "FROM unnest(%b::int[], %b::text[], %b::text[], %b::text[]) "
        "AS v(resource_id, channel, provider, address) "
        "JOIN subscriptions s ON s.db_id = %s AND s.resource_id = v.resource_id "
        "AND s.channel = v.channel AND s.provider = v.provider AND s.address = v.address "
        "ORDER BY 1, 2, 3, 4 FOR UPDATE OF s",
        (res, chan, prov, addr, db_id),
    ).fetchall()
    return {
        (resource_id, channel, provider, address): _StoredSubscription(profile_id, status)
        for resource_id, channel, provider, address, profile_id, status in rows
    }


def _refuse_taken_values(
    conn: psycopg.Connection[Any], db_id: int, targets: dict[str, _Target],
    found: dict[int, Found], subscriptions: dict[SubscriptionKey, _StoredSubscription],
    outcome: BatchOutcome,
) -> None:
    """409 for a job whose write would take another profile's e-mail or subscription."""
    emails = {
        job.write.values["email"]
        for t in targets.values() for job in t.jobs
        if job.write.values.get("email") is not None
    }
    owners: dict[str, str] = {}
    if emails:
        owners = dict(conn.execute(
            "SELECT email, profile_id FROM profiles WHERE db_id = %s AND email = ANY(%s)",
            (db_id, sorted(emails)),
        ).fetchall())
    for target in targets.values():
        kept = []
        for job in target.jobs:
            problem = _taken_by_other(job, target, owners, subscriptions)
            if problem is None:
                kept.append(job)
            else:
                outcome.results[job.index] = _failed(job, problem, found[job.index])
        target.jobs = kept


def _taken_by_other(
    job: Job, target: _Target, owners: dict[str, str],
    subscriptions: dict[SubscriptionKey, _StoredSubscription],
) -> Conflict | None:
    email = job.write.values.get("email")
    if email is not None and owners.get(email, target.profile_id) != target.profile_id:
        return Conflict("data.email: the address belongs to another profile", field="data.email")
    seed = target.seed.subscriptions if target.seed and target.jobs and job is target.jobs[0] else []
    for sub in [*seed, *job.write.subscriptions]:
        stored = subscriptions.get(sub.key)
        if stored is not None and stored.profile_id != target.profile_id:
            return Conflict(f"{sub.path}: the subscription belongs to another profile", field=sub.path)
    return None


# --- writing -------------------------------------------------------------------


@dataclass
class _Rows:
    """The rows one round writes, gathered so that each table gets one statement."""

    new_profiles: list[tuple[str, str | None, list[str], Jsonb]] = field(default_factory=list)
    profile_updates: list[tuple[str, Jsonb]] = field(default_factory=list)
    new_subscriptions: dict[SubscriptionKey, dict[str, Any]] = field(default_factory=dict)
    subscription_updates: dict[SubscriptionKey, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str, str, Jsonb]] = field(default_factory=list)


def _write(
    conn: psycopg.Connection[Any], db_id: int, targets: dict[str, _Target],
    found: dict[int, Found], subscriptions: dict[SubscriptionKey, _StoredSubscription],
    outcome: BatchOutcome,
) -> None:
    rows = _Rows()
    statuses = {key: stored.status for key, stored in subscriptions.items()}
    for target in targets.values():
        if not target.jobs:
            continue
        merged = ProfileWrite()
        for position, job in enumerate(target.jobs):
            write = job.write
            created = target.new and position == 0
            if created and target.seed is not None:
                write = job.write.under(target.seed)
            merged = merged.then(write)
            record = not job.envelope.skip_triggers
            if record:
                kind = ev.PROFILE_CREATED if created else ev.PROFILE_UPDATED
                rows.events.append((target.profile_id, kind, job.feedback_id, Jsonb(_payload(write))))
            for sub in write.subscriptions:
                _stage_subscription(rows, statuses, target.profile_id, sub, job, record)
            outcome.results[job.index] = Result.ok(
                feedback_id=job.feedback_id,
                matching_field=found[job.index].matching_field,
                profile_id=target.profile_id,
            )
            if created:
                outcome.created += 1
            else:
                outcome.updated += 1
        _stage_profile(rows, target, merged)
    _execute(conn, db_id, rows, outcome)


def _payload(write: ProfileWrite) -> dict[str, Any]:
    payload: dict[str, Any] = {"fields": write.values}
    if write.subscriptions:
        payload["subscriptions"] = [
            {"resource_id": s.resource_id, "channel": s.channel, "provider": s.provider, "address": s.address}
            for s in write.subscriptions
        ]
    return payload


def _stage_profile(rows: _Rows, target: _Target, merged: ProfileWrite) -> None:
    values = merged.values
    fields = {k: v for k, v in values.items() if k not in PROFILE_COLUMNS}
    if target.new:
        rows.new_profiles.append((
            target.profile_id,
            values.get("email"),
            list(values.get("phones") or []),
            Jsonb({k: v for k, v in fields.items() if v is not None}),
        ))
        return
    doc: dict[str, Any] = {
        "set": {k: v for k, v in fields.items() if v is not None},
        "clear": [k for k, v in fields.items() if v is None],
    }
    for column in PROFILE_COLUMNS:
        if column in values:
            doc[column] = values[column]
    rows.profile_updates.append((target.profile_id, Jsonb(doc)))


def _stage_subscription(
    rows: _Rows, statuses: dict[SubscriptionKey, str], profile_id: str,
    sub: SubscriptionWrite, job: Job, record: bool,
) -> None:
    key = sub.key
    before = statuses.get(key)
    is_new = before is None and key not in rows.new_subscriptions
    staged = rows.new_subscriptions if (is_new or key in rows.new_subscriptions) else rows.subscription_updates
    entry = staged.setdefault(key, {"profile_id": profile_id, "custom_fields": {}})
    for name, value in sub.values.items():
        if name == "custom_fields":
            entry["custom_fields"].update(value)
        else:
            entry[name] = value
    if is_new:
        entry.setdefault("status", DEFAULT_SUBSCRIPTION_STATUS)
    after = entry.get("status", before)
    statuses[key] = after
    if not record:
        return
    address = {"resource_id": key[0], "channel": key[1], "provider": key[2], "address": key[3]}
    if before is None and after == DEFAULT_SUBSCRIPTION_STATUS:
        rows.events.append((profile_id, ev.SUBSCRIBED, job.feedback_id, Jsonb({**address, "status": after})))
    elif before != after:
        rows.events.append((
            profile_id, ev.SUBSCRIPTION_STATUS_CHANGED, job.feedback_id,
            Jsonb({**address, "from": before, "to": after}),
        ))


def _execute(conn: psycopg.Connection[Any], db_id: int, rows: _Rows, outcome: BatchOutcome) -> None:
    """One statement per table; pipelined, so the round costs one round trip."""
    with conn.pipeline():
        if rows.new_profiles:
            ids, emails, phones, fields = zip(*rows.new_profiles)
            conn.execute(
                "INSERT INTO profiles (db_id, profile_id, email, phones, fields) "
                "SELECT %s, v.id, v.email, ARRAY(SELECT jsonb_array_elements_text(v.phones)), v.fields "
                "FROM unnest(%b::text[], %b::text[], %b::jsonb[], %b::jsonb[]) AS v(id, email, phones, fields)",
                (db_id, list(ids), list(emails), [Jsonb(p) for p in phones], list(fields)),
            )
        if rows.profile_updates:
            ids, docs = zip(*rows.profile_updates)
            conn.execute(_UPDATE_PROFILES, (list(ids), list(docs), db_id))
        if rows.new_subscriptions:
            conn.execute(_INSERT_SUBSCRIPTIONS, (db_id, *_subscription_columns(rows.new_subscriptions, new=True)))
        if rows.subscription_updates:
            conn.execute(_UPDATE_SUBSCRIPTIONS, (*_subscription_columns(rows.subscription_updates, new=False), db_id))
        if rows.events:
            ids, kinds, feedback_ids, payloads = zip(*rows.events)
            conn.execute(
                "INSERT INTO events (db_id, profile_id, kind, feedback_id, payload) "
                "SELECT %s, * FROM unnest(%b::text[], %b::text[], %b::text[], %b::jsonb[])",
                (db_id, list(ids), list(kinds), list(feedback_ids), list(payloads)),
            )
            outcome.events.extend(
                TriggerEvent(db_id=db_id, profile_id=i, kind=k, feedback_id=f, payload=p.obj)
                for i, k, f, p in rows.events
            )


def _subscription_columns(staged: dict[SubscriptionKey, dict[str, Any]], *, new: bool) -> list[list[Any]]:
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
            entry["cf_set"] = {n: v for n, v in custom.items() if v is not None}
            entry["cf_clear"] = [n for n, v in custom.items() if v is None]
            docs.append(Jsonb(entry))
        columns.append(docs)
    return columns


_UPDATE_PROFILES = """
UPDATE profiles AS p SET
    email = CASE WHEN u.doc ? 'email' THEN u.doc->>'email' ELSE p.email END,
    phones = CASE WHEN NOT u.doc ? 'phones' THEN p.phones
                  WHEN jsonb_typeof(u.doc->'phones') = 'array'
                  THEN ARRAY(SELECT jsonb_array_elements_text(u.doc->'phones'))
                  ELSE '{}' END,
    fields = (p.fields || (u.doc->'set')) - ARRAY(SELECT jsonb_array_elements_text(u.doc->'clear')),
    updated_at = now()
FROM unnest(%b::text[], %b::jsonb[]) AS u(profile_id, doc)
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
    custom_fields = (s.custom_fields || (u.doc->'cf_set'))
                    - ARRAY(SELECT jsonb_array_elements_text(u.doc->'cf_clear')),
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


# --- the message log -----------------------------------------------------------


def _replay_logged(conn: psycopg.Connection[Any], db_id: int, jobs: list[Job], outcome: BatchOutcome) -> list[Job]:
    """Answer jobs already applied (found in the message log) with their logged result."""
    suspects = [job for job in jobs if job.maybe_applied]
    if not suspects:
        return jobs
    logged = dict(conn.execute(
        "SELECT message_key, result FROM message_log WHERE db_id = %s AND message_key = ANY(%s)",
        (db_id, [job.message_key for job in suspects]),
    ).fetchall())
    fresh = []
    for job in jobs:
        raw = logged.get(job.message_key) if job.maybe_applied else None
        if raw is None:
            fresh.append(job)
        else:
            outcome.results[job.index] = Result.from_json(bytes(raw))
            outcome.replayed.add(job.index)
    return fresh


def _log_results(conn: psycopg.Connection[Any], db_id: int, logged: list[tuple[bytes, Result]]) -> None:
    # One row per key: identical messages in one batch share a key, the last one wins.
    latest = {key: result.to_json() for key, result in logged}
    if not latest:
        return
    conn.execute(
        "INSERT INTO message_log (db_id, message_key, result) "
        "SELECT %s, k, r FROM unnest(%b::bytea[], %b::bytea[]) AS t(k, r) "
        "ON CONFLICT (db_id, message_key) DO UPDATE SET result = EXCLUDED.result, applied_at = now()",
        (db_id, list(latest), list(latest.values())),
    )
