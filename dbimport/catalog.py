"""The catalog: accounts' databases, resources, links and field declarations, cached."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BadInput, Forbidden, NotFound
from .fields import FieldDecl, Limits

# A catalog miss (an id or field we do not know) reloads at most this often, so a
# stream of messages naming unknown databases cannot hammer PostgreSQL.
RELOAD_MIN_INTERVAL_S = 1.0
# Even without misses, declarations changed by `init-db --seed` are seen this fast.
RELOAD_MAX_AGE_S = 60.0
DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Resource:
    """A subscription channel owner (a newsletter, an app) of one account."""

    account_id: int
    resource_id: int
    name: str
    databases: frozenset[int]
    fields: Mapping[str, FieldDecl] = field(default_factory=dict)


@dataclass(frozen=True)
class Database:
    """A profile database of one account, with its declared fields."""

    account_id: int
    db_id: int
    name: str
    fields: Mapping[str, FieldDecl] = field(default_factory=dict)
    resources: Mapping[int, Resource] = field(default_factory=dict)
    # The limits a value written to (or matched on) its fields is held to.
    limits: Limits = field(default_factory=Limits)
    # Every resource id of the catalog -> the accounts that have one by that id (one
    # mapping shared by all databases): what tells a subscription's 400 from its 403.
    resource_owners: Mapping[int, frozenset[int]] = field(default_factory=dict)

    def resource(self, resource_id: int, *, field_name: str = "resource_id") -> Resource:
        """The linked resource; 403 if it is not the account's or not linked here."""
        found = self.resources.get(resource_id)
        if found is None:
            raise Forbidden(
                f"{field_name} {resource_id} is not a resource of account {self.account_id} "
                f"linked to database {self.db_id}",
                field=field_name,
            )
        return found

    def subscription_resource(self, resource_id: int, *, field_name: str) -> Resource:
        """The linked resource of a subscription in `data`: 400 if it is unknown or not
        linked to this database, 403 if it is another account's."""
        found = self.resources.get(resource_id)
        if found is not None:
            return found
        owners = self.resource_owners.get(resource_id, frozenset())
        if self.account_id in owners:
            raise BadInput(
                f"{field_name} {resource_id} is a resource of account {self.account_id} that is not "
                f"linked to database {self.db_id}",
                field=field_name,
            )
        if owners:
            raise Forbidden(f"{field_name} {resource_id} is a resource of another account", field=field_name)
        raise BadInput(f"{field_name} {resource_id}: no such resource", field=field_name)

    def subscription_fields(self, resource_id: int | None) -> Mapping[str, FieldDecl]:
        """Subscription custom fields declared by one linked resource, or by all of them."""
        if resource_id is not None:
            return self.resource(resource_id).fields
        merged: dict[str, FieldDecl] = {}
        for res in self.resources.values():
            merged.update(res.fields)
        return merged


@dataclass(frozen=True)
class Snapshot:
    databases: Mapping[int, Database]
    loaded_at: float


class Catalog:
    """Answers tenancy questions from memory, reloading from PostgreSQL when stale.

    `loader` returns the rows of the catalog tables (see `read_catalog`).
    """

    def __init__(
        self, *, loader: Callable[[], Mapping[str, list[tuple[Any, ...]]]],
        limits: Limits = DEFAULT_LIMITS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._limits = limits
        self._clock = clock
        self._snapshot = Snapshot(databases={}, loaded_at=float("-inf"))

    def reload(self) -> None:
        self._snapshot = Snapshot(databases=build_databases(self._loader(), self._limits), loaded_at=self._clock())

    def refresh_if_stale(self) -> None:
        if self._clock() - self._snapshot.loaded_at >= RELOAD_MAX_AGE_S:
            self.reload()

    def _reload_on_miss(self) -> bool:
        if self._clock() - self._snapshot.loaded_at < RELOAD_MIN_INTERVAL_S:
            return False
        self.reload()
        return True

    def database(self, account_id: int, db_id: int) -> Database:
        """The database, checked against the account: 404 unknown, 403 another's."""
        db = self._snapshot.databases.get(db_id)
        if db is None and self._reload_on_miss():
            db = self._snapshot.databases.get(db_id)
        if db is None:
            raise NotFound(f"db_id {db_id}: no such database", field="db_id")
        if db.account_id != account_id:
            raise Forbidden(
                f"db_id {db_id} does not belong to account_id {account_id}", field="db_id"
            )
        return db

    def reloaded(self, db: Database) -> Database | None:
        """`db` freshly loaded, if a reload is allowed now (at most once a second)."""
        if not self._reload_on_miss():
            return None
        return self._snapshot.databases.get(db.db_id)


def build_databases(
    rows: Mapping[str, list[tuple[Any, ...]]], limits: Limits = DEFAULT_LIMITS
) -> dict[int, Database]:
    """Assemble `Database` objects from the catalog tables' rows."""
    resource_fields: dict[tuple[int, int], dict[str, FieldDecl]] = {}
    for account_id, resource_id, name, type_, options in rows["resource_fields"]:
        resource_fields.setdefault((account_id, resource_id), {})[name] = FieldDecl(
            name, type_, tuple(options or ())
        )
    links: dict[tuple[int, int], set[int]] = {}
    for account_id, resource_id, db_id in rows["resource_databases"]:
        links.setdefault((account_id, resource_id), set()).add(db_id)
    resources: dict[tuple[int, int], Resource] = {}
    for account_id, resource_id, name in rows["resources"]:
        key = (account_id, resource_id)
        resources[key] = Resource(
            account_id=account_id,
            resource_id=resource_id,
            name=name,
            databases=frozenset(links.get(key, ())),
            fields=resource_fields.get(key, {}),
        )
    db_fields: dict[int, dict[str, FieldDecl]] = {}
    for db_id, name, type_, options in rows["database_fields"]:
        db_fields.setdefault(db_id, {})[name] = FieldDecl(name, type_, tuple(options or ()))
    owner_sets: dict[int, set[int]] = {}
    for account_id, resource_id in resources:
        owner_sets.setdefault(resource_id, set()).add(account_id)
    owners = {rid: frozenset(accounts) for rid, accounts in owner_sets.items()}
    databases: dict[int, Database] = {}
    for account_id, db_id, name in rows["databases"]:
        linked = {
            res.resource_id: res
            for (acc, _), res in resources.items()
            if acc == account_id and db_id in res.databases
        }
        databases[db_id] = Database(
            account_id=account_id,
            db_id=db_id,
            name=name,
            fields=db_fields.get(db_id, {}),
            resources=linked,
            limits=limits,
            resource_owners=owners,
        )
    return databases


CATALOG_QUERIES = {
    "databases": "SELECT account_id, db_id, name FROM databases",
    "database_fields": "SELECT db_id, name, type, options FROM database_fields",
    "resources": "SELECT account_id, resource_id, name FROM resources",
    "resource_fields": "SELECT account_id, resource_id, name, type, options FROM resource_fields",
    "resource_databases": "SELECT account_id, resource_id, db_id FROM resource_databases",
}


def read_catalog(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The catalog tables' rows, read in one transaction."""
    return {name: conn.execute(query).fetchall() for name, query in CATALOG_QUERIES.items()}
