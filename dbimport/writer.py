"""The batch write: match and write many messages in one transaction, in order.

The batch is applied segment by segment (see `ordering`): each segment's
messages are looked up together, a few statements for the whole segment,
then written together. Before it creates a profile, a batch locks a claim
row per match value, then looks again: a concurrent worker that created the
profile first has committed by then, and is found. The claims of all the
segments are taken at once, after the first look-up and before any write, in
one sorted order. Unique values (e-mail,
subscription) are checked under the same transaction and backed by unique
indexes.
"""
from __future__ import annotations

import hashlib
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from . import events as ev
from . import staging
from .errors import BadInput, Conflict, NotFound
from .events import TriggerEvent
from .jobs import Job
from .lookup import Lookup
from .matcher import Found, Key
from .message_log import logged, record
from .ordering import Segment, next_segment
from .profile_data import ProfileWrite, SubscriptionWrite
from .results import Result
from .staging import SubscriptionKey


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
        fresh = _answer_applied(conn, db_id, db_jobs, outcome)
        _apply_in_segments(conn, db_id, fresh, outcome)
        record(conn, db_id, ((job.message_key, outcome.results[job.index]) for job in fresh),
               overwrite=_first_deliveries_held(fresh))
    return outcome


def _answer_applied(conn: psycopg.Connection[Any], db_id: int, jobs: list[Job], outcome: BatchOutcome) -> list[Job]:
    """Answer the jobs applied already from the log (only those that may have been
    are looked up); the rest remain."""
    maybe = [job.message_key for job in jobs if job.maybe_applied]
    found = logged(conn, db_id, maybe) if maybe else {}
    fresh = []
    for job in jobs:
        result = found.get(job.message_key) if job.maybe_applied else None
        if result is not None:
            outcome.results[job.index] = result
            outcome.replayed.add(job.index)
        else:
            fresh.append(job)
    return fresh


def _first_deliveries_held(jobs: list[Job]) -> Callable[[bytes], bool]:
    """Whether a logged key's row may be overwritten: every job of the batch with that
    key is a first delivery the worker still holds (an identical message was sent
    earlier; see message_log)."""
    by_key: dict[bytes, list[Job]] = defaultdict(list)
    for job in jobs:
        by_key[job.message_key].append(job)

    def overwrite(key: bytes) -> bool:
        return all(not job.maybe_applied and job.still_held() for job in by_key[key])

    return overwrite


def _apply_in_segments(conn: psycopg.Connection[Any], db_id: int, jobs: list[Job], outcome: BatchOutcome) -> None:
    lookup = Lookup(conn, db_id)
    pending = jobs
    found: dict[int, Found] = {}
    claimed: set[bytes] = set()
    first = True
    while pending:
        found.update(_find(lookup, [job for job in pending if job.index not in found]))
        if first:
            first = False
            # Every claim the batch will likely need, before it writes anything: the
            # claims of all its segments in one sorted statement, so that two workers
            # never take them in opposite orders (a later segment's claim waiting on a
            # worker that waits on this one's earlier claims or row locks).
            _claim(conn, db_id, [key for job in pending if job.may_create and not found[job.index].profile_ids
                                 for key in job.query.keys], claimed)
        segment, later = next_segment(pending, found)
        applied = _apply_segment(conn, lookup, segment.jobs, found, outcome, claimed)
        deferred = segment.jobs[applied:]
        for job in deferred:
            # Deferred: answered and looked up again after this segment's writes.
            del found[job.index]
            outcome.results.pop(job.index, None)
        pending = sorted([*deferred, *later], key=lambda job: job.index)
        _forget_stale(pending, found, segment)


def _forget_stale(pending: list[Job], found: dict[int, Found], segment: Segment[Job]) -> None:
    """Drop the look-ups the segment's writes may have changed."""
    for job in pending:
        seen = found.get(job.index)
        if seen is not None and segment.conflicts(job, seen):
            del found[job.index]


# --- one segment -----------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    """A profile a segment writes: the jobs that write it, in order."""

    profile_id: str
    new: bool
    jobs: list[Job] = field(default_factory=list)
    seed: ProfileWrite | None = None


def _apply_segment(
    conn: psycopg.Connection[Any], lookup: Lookup, jobs: list[Job], found: dict[int, Found],
    outcome: BatchOutcome, claimed: set[bytes],
) -> int:
    """Write the segment; returns how many of its jobs (a prefix) were settled.

    The rest were deferred: they would take a unique value an earlier job of
    the segment frees.
    """
    targets: dict[str, _Target] = {}
    to_create = _sort_out(jobs, found, targets, outcome)
    if to_create:
        _claim(conn, lookup.db_id, [key for job in to_create for key in job.query.keys], claimed)
        found.update(_find(lookup, to_create))
        for job in _sort_out(to_create, found, targets, outcome):
            seed = job.matcher.new_profile(job.query)
            if not job.matcher.would_find(job.query, job.write.under(seed)):
                outcome.results[job.index] = _failed(job, _unreachable(job), found[job.index])
                continue
            new_id = new_profile_id()
            targets[new_id] = _Target(new_id, new=True, jobs=[job], seed=seed)
    for target in targets.values():
        target.jobs.sort(key=lambda j: j.index)
    subscriptions = _lock_subscriptions(conn, lookup.db_id, targets)
    settled = _refuse_taken_values(conn, lookup.db_id, jobs, targets, found, subscriptions, outcome)
    _write(conn, lookup.db_id, targets, found, subscriptions, outcome)
    return settled


def _sort_out(
    jobs: list[Job], found: dict[int, Found], targets: dict[str, _Target], outcome: BatchOutcome
) -> list[Job]:
    """Answer the failed jobs, file the updates under their targets; return the creates."""
    to_create = []
    for job in jobs:
        decision = _decide(job, found[job.index])
        if isinstance(decision, BadInput):
            outcome.results[job.index] = _failed(job, decision, found[job.index])
        elif decision is None:
            to_create.append(job)
        else:
            targets.setdefault(decision, _Target(decision, new=False)).jobs.append(job)
    return to_create


def _find(lookup: Lookup, jobs: Sequence[Job]) -> dict[int, Found]:
    """Each job's look-up: one `find_many` call per matching mode."""
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


def _unreachable(job: Job) -> BadInput:
    return BadInput(
        f"resource_id: matching mode {job.matcher.name!r} searches subscriptions, and the profile this "
        "message would create has none to find it by again; give resource_id (the new profile is "
        "subscribed to it), or a subscription in data.subscriptions that carries the match value",
        field="resource_id",
    )


def _failed(job: Job, exc: BadInput, found: Found) -> Result:
    return Result.failed(exc, feedback_id=job.feedback_id, matching_field=found.matching_field)


def claim_key(key: Key) -> bytes:
    return hashlib.blake2b(f"{key.kind}\n{key.value}".encode(), digest_size=16).digest()


def _claim(conn: psycopg.Connection[Any], db_id: int, keys: Iterable[Key], claimed: set[bytes]) -> None:
    """Lock a claim row per key not `claimed` yet in this transaction, in one global
    order so that workers never deadlock; add them to `claimed`."""
    claim_keys = sorted({claim_key(key) for key in keys} - claimed)
    if not claim_keys:
        return
    claimed.update(claim_keys)
    conn.execute(
        # Re-claiming rewrites no column (a HOT update that only takes the row lock).
        "INSERT INTO match_claims (db_id, claim_key) SELECT %s, k FROM unnest(%b::bytea[]) AS k "
        "ON CONFLICT (db_id, claim_key) DO UPDATE SET claim_key = EXCLUDED.claim_key",
        (db_id, claim_keys),
    )


def new_profile_id() -> str:
    return secrets.token_hex(12)


# --- unique values -------------------------------------------------------------------


@dataclass(slots=True)
class _StoredSubscription:
    profile_id: str
    status: str


def _subscription_writes(target: _Target) -> list[SubscriptionWrite]:
    seed = list(target.seed.subscriptions) if target.seed else []
    return seed + [sub for j in target.jobs for sub in j.write.subscriptions]


def _lock_subscriptions(
    conn: psycopg.Connection[Any], db_id: int, targets: dict[str, _Target]
) -> dict[SubscriptionKey, _StoredSubscription]:
    """The stored subscriptions the segment writes, locked, in key order."""
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
    conn: psycopg.Connection[Any], db_id: int, jobs: list[Job], targets: dict[str, _Target],
    found: dict[int, Found], subscriptions: dict[SubscriptionKey, _StoredSubscription],
    outcome: BatchOutcome,
) -> int:
    """409 for a job whose write would take another profile's e-mail or subscription.

    A job that wants an e-mail an earlier job of the segment may free (by
    changing its profile's e-mail) is deferred with every job after it.
    Returns how many jobs of the segment stay.
    """
    target_of = {job.index: t for t in targets.values() for job in t.jobs}
    owners = _email_owners(conn, db_id, [job for job in jobs if job.index in target_of])
    first_changer: dict[str, int] = {}
    for job in jobs:
        target = target_of.get(job.index)
        if target is not None and "email" in job.effects.changes:
            first_changer.setdefault(target.profile_id, job.index)
    keep = len(jobs)
    refused: dict[int, Conflict] = {}
    for position, job in enumerate(jobs):
        target = target_of.get(job.index)
        if target is None:
            continue
        email = job.write.values.get("email")
        owner = owners.get(email) if email is not None else None
        if owner is not None and owner != target.profile_id and first_changer.get(owner, job.index) < job.index:
            keep = position
            break
        problem = _taken_by_other(job, target, owner, subscriptions)
        if problem is not None:
            refused[job.index] = problem
    kept = {job.index for job in jobs[:keep]}
    for profile_id, target in list(targets.items()):
        target.jobs = [j for j in target.jobs if j.index in kept and j.index not in refused]
        if not target.jobs:
            del targets[profile_id]
    for index, problem in refused.items():
        if index in kept:
            job = next(j for j in jobs if j.index == index)
            outcome.results[index] = _failed(job, problem, found[index])
    return keep


def _email_owners(conn: psycopg.Connection[Any], db_id: int, jobs: list[Job]) -> dict[str, str]:
    emails = sorted({job.write.values["email"] for job in jobs if job.write.values.get("email") is not None})
    if not emails:
        return {}
    return dict(conn.execute(
        "SELECT p.email, p.profile_id FROM unnest(%b::text[]) AS v(email) "
        "JOIN profiles p ON p.db_id = %s::int AND p.email = v.email",
        (emails, db_id),
    ).fetchall())


def _taken_by_other(
    job: Job, target: _Target, email_owner: str | None,
    subscriptions: dict[SubscriptionKey, _StoredSubscription],
) -> Conflict | None:
    if email_owner is not None and email_owner != target.profile_id:
        return Conflict("data.email: the address belongs to another profile", field="data.email")
    seed = target.seed.subscriptions if target.seed and job is target.jobs[0] else []
    for sub in [*seed, *job.write.subscriptions]:
        stored = subscriptions.get(sub.key)
        if stored is not None and stored.profile_id != target.profile_id:
            return Conflict(f"{sub.path}: the subscription belongs to another profile", field=sub.path)
    return None


# --- writing -------------------------------------------------------------------------


def _write(
    conn: psycopg.Connection[Any], db_id: int, targets: dict[str, _Target],
    found: dict[int, Found], subscriptions: dict[SubscriptionKey, _StoredSubscription],
    outcome: BatchOutcome,
) -> None:
    """Stage every target's merged write and its events, then send them at once."""
    rows = staging.Rows()
    statuses = {key: stored.status for key, stored in subscriptions.items()}
    for target in targets.values():
        merged = ProfileWrite()
        for position, job in enumerate(target.jobs):
            created = target.new and position == 0
            write = job.write.under(target.seed) if created and target.seed is not None else job.write
            merged = merged.then(write)
            record = not job.envelope.skip_triggers
            if record:
                kind = ev.PROFILE_CREATED if created else ev.PROFILE_UPDATED
                rows.add_event(target.profile_id, kind, job.feedback_id, staging.payload(write))
            for sub in write.subscriptions:
                staging.stage_subscription(
                    rows, statuses, target.profile_id, sub, feedback_id=job.feedback_id, record=record
                )
            outcome.results[job.index] = Result.ok(
                feedback_id=job.feedback_id,
                matching_field=found[job.index].matching_field,
                profile_id=target.profile_id,
                left_out=job.write.left_out,
            )
            outcome.created += created
            outcome.updated += not created
        staging.stage_profile(rows, target.profile_id, merged, new=target.new)
    outcome.events.extend(staging.execute(conn, db_id, rows))
