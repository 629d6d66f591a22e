"""Order inside a batch: which messages may be looked up and written together.

A batch is applied as consecutive segments. Within a segment every look-up
runs before every write, so a message joins the current segment only if no
earlier message of the segment could change what it finds: one that writes
a value it matches on, that changes (or clears) a value of the profile it
found, or that writes the same unique value (an e-mail, a subscription). Two
messages that find the same profile share a segment: their writes are merged
in message order.

A message that cannot join waits for the next segment, and so does every later
message that touches it (shares a value it reads or writes, or a profile); the
messages after it that touch neither it nor any other waiting message join the
segment all the same. Such messages commute: applying them first gives what the
queue's order gives. So a batch takes a few segments (a create, then the updates
of the profile it creates, say), not one per such dependency.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .actions import Pending
from .lookup import canonical
from .matcher import Found, Key, Query
from .profile_data import ProfileWrite, SubscriptionWrite

# Kinds whose values several profiles may share; every other kind is unique
# (a profile e-mail, a subscription's address).
SHARED_KINDS = ("field:", "subscription_field:")
_SUBSCRIPTION_KINDS = {"email": "email", "sms": "phone"}


@dataclass(frozen=True, slots=True)
class Effects:
    """The identity values a message matches on, writes, and changes.

    `changes` holds the kinds it sets to something other than the value it
    matched on: the profile's old value of that kind may disappear. `unknown`
    holds the kinds it writes a value of that is not known before commit (an
    `incr` of a matchable field): any look-up of such a kind may be affected.
    """

    reads: frozenset[Key]
    writes: frozenset[Key]
    changes: frozenset[str]
    unknown: frozenset[str] = frozenset()


# A written value known only when the write commits (the result of an action).
UNKNOWN = object()


def effects(query: Query, write: ProfileWrite) -> Effects:
    reads = frozenset(query.keys)
    writes: set[Key] = set()
    changes: set[str] = set()
    unknown: set[str] = set()
    for kind, value in written_identities(write):
        if value is UNKNOWN:
            unknown.add(kind)
            changes.add(kind)
            continue
        exact = None if value is None else Key(kind, str(value))
        if exact is not None:
            writes.add(exact)
        if exact not in reads:
            changes.add(kind)
    return Effects(reads, frozenset(writes), frozenset(changes), frozenset(unknown))


def written_identities(write: ProfileWrite) -> Iterable[tuple[str, object]]:
    """(kind, canonical value) of each identity value a write sets; None clears one,
    UNKNOWN is one known only at commit.

    System fields (`_fname`...) are no identity: no matcher searches them.
    """
    for name, value in write.values.items():
        if name == "email":
            yield "email", value
        elif name == "phones":
            if isinstance(value, Pending):
                yield from pending_identities("phone", value, canonical=str)
                continue
            if not value:
                yield "phone", None
            for phone in value or ():
                yield "phone", phone
        elif not name.startswith("_"):
            yield from field_identities(f"field:{name}", value)
    for sub in write.subscriptions:
        key = subscription_key(sub)
        yield key.kind, key.value
        for name, value in sub.values.get("custom_fields", {}).items():
            yield from field_identities(f"subscription_field:{name}", value)


def pending_identities(kind: str, pending: Pending, *, canonical: Any) -> Iterable[tuple[str, object]]:
    """What actions do to identities: an added element is written, a deleted one is a
    change, an increment's result is unknown until commit."""
    for op in pending.ops:
        if op.name == "add":
            for element in op.value:
                yield kind, canonical(element)
        elif op.name == "delete":
            yield kind, None
        elif op.name == "incr":
            yield kind, UNKNOWN


def field_identities(kind: str, value: Any) -> Iterable[tuple[str, object]]:
    """A custom field's identity values: one per tag of a tags value (as `custom` keys them)."""
    if isinstance(value, Pending):
        yield from pending_identities(kind, value, canonical=canonical)
    elif value is None or value == []:
        yield kind, None
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        for tag in value:
            yield kind, canonical(tag)
    else:
        yield kind, canonical(value)


def subscription_key(sub: SubscriptionWrite) -> Key:
    """A subscription's identity, in the kind its channel's matchers search."""
    if sub.channel == "push":
        return Key("push", f"{sub.provider}\n{sub.address}")
    return Key(_SUBSCRIPTION_KINDS.get(sub.channel, f"subscription:{sub.channel}"), sub.address)


class Ordered(Protocol):
    """What ordering needs of a message: its place, what it does, whether it may create."""

    @property
    def index(self) -> int: ...

    @property
    def effects(self) -> Effects: ...

    @property
    def may_create(self) -> bool: ...


J = TypeVar("J", bound=Ordered)


def _unique(keys: Iterable[Key]) -> set[Key]:
    return {key for key in keys if not key.kind.startswith(SHARED_KINDS)}


@dataclass
class Segment(Generic[J]):
    """Messages applied together, with an index of what they write and change."""

    jobs: list[J] = field(default_factory=list)
    _writes: set[Key] = field(default_factory=set)
    _unique_writes: set[Key] = field(default_factory=set)
    _changed: dict[str, set[str]] = field(default_factory=dict)
    _unknown: set[str] = field(default_factory=set)

    def conflicts(self, job: J, found: Found) -> bool:
        """Whether `job`'s look-up or write could be affected by this segment's writes."""
        e = job.effects
        if not e.reads.isdisjoint(self._writes) or not e.writes.isdisjoint(self._unique_writes):
            return True
        if self._unknown and any(key.kind in self._unknown for key in e.reads):
            return True
        return any(
            not found.profile_ids.isdisjoint(self._changed.get(key.kind, ())) for key in e.reads
        )

    def add(self, job: J, found: Found, writes: set[Key]) -> None:
        """Add `job`; `writes` are its keys written (`_written`)."""
        e = job.effects
        self.jobs.append(job)
        self._writes |= writes
        self._unique_writes |= _unique(writes)
        self._unknown |= e.unknown
        if e.changes and len(found.profile_ids) == 1:
            for kind in e.changes:
                self._changed.setdefault(kind, set()).update(found.profile_ids)


@dataclass
class Waiting:
    """The footprint of the messages left for a later segment: what a message that
    joins the segment must not touch, lest it overtake one it does not commute with."""

    _reads: set[Key] = field(default_factory=set)
    _writes: set[Key] = field(default_factory=set)
    _unique_writes: set[Key] = field(default_factory=set)
    _profiles: set[str] = field(default_factory=set)
    _read_kinds: set[str] = field(default_factory=set)
    _unknown: set[str] = field(default_factory=set)

    def touches(self, job: Ordered, found: Found, writes: set[Key]) -> bool:
        e = job.effects
        return bool(
            not e.reads.isdisjoint(self._writes)
            or not writes.isdisjoint(self._reads)
            or not _unique(writes).isdisjoint(self._unique_writes)
            or not found.profile_ids.isdisjoint(self._profiles)
            or any(key.kind in self._unknown for key in e.reads)
            or not e.unknown.isdisjoint(self._read_kinds)
        )

    def add(self, job: Ordered, found: Found, writes: set[Key]) -> None:
        e = job.effects
        self._reads |= e.reads
        self._writes |= writes
        self._unique_writes |= _unique(writes)
        self._profiles |= found.profile_ids
        self._read_kinds |= {key.kind for key in e.reads}
        self._unknown |= e.unknown


def _written(job: Ordered, found: Found) -> set[Key]:
    """The keys a message writes: its writes, and its match values if it creates (the
    profile it creates holds them)."""
    writes = set(job.effects.writes)
    if not found.profile_ids and job.may_create:
        writes |= job.effects.reads
    return writes


def next_segment(pending: Sequence[J], found: dict[int, Found]) -> tuple[Segment[J], list[J]]:
    """The messages of `pending` to apply together now, and those left for later
    (in order): each message joins unless it conflicts with the segment or touches
    a message left for later."""
    segment: Segment[J] = Segment()
    waiting = Waiting()
    later: list[J] = []
    for job in pending:
        seen = found[job.index]
        writes = _written(job, seen)
        if (later and waiting.touches(job, seen, writes)) or (segment.jobs and segment.conflicts(job, seen)):
            later.append(job)
            waiting.add(job, seen, writes)
        else:
            segment.add(job, seen, writes)
    return segment, later
