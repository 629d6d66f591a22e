"""The matcher API: what a matching-mode plugin implements and what it is given."""
from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .markers import hookimpl
from .profile_data import ProfileWrite

if TYPE_CHECKING:
    from .catalog import Database
    from .lookup import Lookup

@dataclass(frozen=True, slots=True)
class Key:
    """An identity value: an e-mail, a phone, a custom field's value.

    `kind` groups values that can find each other (a profile's e-mail and an
    e-mail subscription's address are both kind `email`). The core orders a
    batch by keys, and claims them before it creates a profile, so that two
    workers never create two profiles for one value. `value` is canonical.

    Built-in kinds: `email`, `phone`, `push`, `profile`, `field:NAME` (a
    custom field of the profile), `subscription_field:NAME`; a plugin that
    searches something new uses a kind of its own.
    """

    kind: str
    value: str


@dataclass(frozen=True)
class Query:
    """One message's match request, normalised by `Matcher.prepare`.

    `keys` are the identity values searched; `values` holds whatever the
    matcher needs in `find` (normalised e-mail, phone, field value...).
    """

    keys: tuple[Key, ...]
    matching_field: str
    resource_id: int | None = None
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Found:
    """The profiles a query found: none (create or 404), one, or several (409)."""

    profile_ids: frozenset[str]
    matching_field: str

    @classmethod
    def of(cls, ids: Any, matching_field: str) -> Found:
        return cls(frozenset(ids), matching_field)


class Matcher(abc.ABC):
    """A matching mode. Subclass it (or configure one of the families in
    `dbimport.api`); an instance is a plugin of its own: register it, point an
    entry point at it, or return it from a plugin's `dbimport_register_matchers`.

    Write `prepare`, and either the single-message `find` or the batch form
    `find_many` (one round trip for many queries; the core only calls
    `find_many`, whose default calls `find` for each query). The core calls it
    inside the batch's transaction, after claiming the query's keys, and
    retries on its own.
    """

    #: the value of the message's `matching` key that selects this mode
    name: str
    #: a JSON Schema fragment for the message keys this mode needs, e.g.
    #: ``{"required": ["email"], "properties": {"email": {"type": "string"}}}``;
    #: it is composed with the base message schema
    schema: Mapping[str, Any] = {}
    #: whether no match creates a profile (else: 404)
    creates: bool = True
    #: one line for `dbimport-worker matchers`
    description: str = ""

    @hookimpl
    def dbimport_register_matchers(self) -> list[Matcher]:
        """A matcher registered as a plugin provides itself."""
        return [self]

    @abc.abstractmethod
    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        """Normalise the match values of `message` (already schema-valid).

        Raise `BadInput` (400) for an empty or malformed value, `Forbidden`
        (403) for a resource the database may not use.
        """

    def find(self, lookup: Lookup, query: Query) -> Found:
        """The profiles of `lookup.db_id` that `query` matches."""
        return self.find_many(lookup, [query])[0]

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        """`find` for each query, in order; override to look them up together."""
        return [self.find(lookup, query) for query in queries]

    def new_profile(self, query: Query) -> ProfileWrite:
        """What a profile created for `query` holds before the message's `data`:
        the match value, so that the next message finds it."""
        return ProfileWrite()

    def would_find(self, query: Query, created: ProfileWrite) -> bool:
        """Whether `query` would find a profile created with `created` (`new_profile`
        under the message's data) again. A create that would not is refused (400
        naming resource_id): an import never leaves a profile no message can reach.
        A mode whose `new_profile` writes the match value into the profile needs
        no override."""
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} mode={self.name!r}>"
