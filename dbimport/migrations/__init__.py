"""The store's schema: its migrations (the SQL files beside this module), its version, its database."""
from __future__ import annotations

import importlib.resources
import logging
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..store import Store, database_name, translate, with_database

log = logging.getLogger(__name__)

# Serialises concurrent `init-db` runs; any constant unique to dbimport will do.
MIGRATION_LOCK_ID = 0x64_62_69_6D_70  # "dbimp"
MAINTENANCE_DATABASE = "postgres"
_MIGRATION_FILE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")

# The unique indexes the worker's guarantees rest on (`check` verifies them).
REQUIRED_UNIQUE_KEYS: dict[str, list[tuple[str, ...]]] = {
    "profiles": [("db_id", "profile_id"), ("db_id", "email")],
    "subscriptions": [("db_id", "resource_id", "channel", "provider", "address")],
    "message_log": [("db_id", "message_key")],
    "match_claims": [("db_id", "claim_key")],
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in importlib.resources.files("dbimport.migrations").iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def current_version() -> int:
    return migrations()[-1].version


def create_database(dsn: str) -> bool:
    """Create the database `dsn` names if it is missing; True if it was created."""
    name = database_name(dsn)
    try:
        with psycopg.connect(with_database(dsn, MAINTENANCE_DATABASE), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists:
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                return False  # created by a concurrent init-db
            log.info("created database %s", name)
            return True
    except psycopg.Error as exc:
        translated = translate(exc, dsn)
        if translated is exc:
            raise
        raise translated from None


def migrate(store: Store) -> list[int]:
    """Apply the migrations the store lacks, each in its own transaction."""
    applied: list[int] = []
    with store.transaction() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS dbimport_schema ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM dbimport_schema")}
        for migration in migrations():
            if migration.version in done:
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO dbimport_schema (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            log.info("applied migration %s", migration.name)
            applied.append(migration.version)
    return applied


def installed_version(conn: psycopg.Connection[Any]) -> int:
    """The store's schema version; 0 if it has none."""
    exists = conn.execute("SELECT to_regclass('dbimport_schema')").fetchone()
    if not exists or exists[0] is None:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM dbimport_schema").fetchone()
    return int(row[0]) if row else 0


def unique_keys(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[str, ...]]]:
    """Every primary and unique key of the public schema: table -> [columns]."""
    rows = conn.execute(
        """
        SELECT t.relname, array_agg(a.attname ORDER BY k.ord)
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
        WHERE n.nspname = current_schema() AND (i.indisunique OR i.indisprimary)
        GROUP BY t.relname, i.indexrelid
        """
    ).fetchall()
    keys: dict[str, list[tuple[str, ...]]] = {}
    for table, columns in rows:
        keys.setdefault(table, []).append(tuple(columns))
    return keys


def missing_unique_keys(conn: psycopg.Connection[Any]) -> list[str]:
    present = unique_keys(conn)
    return [
        f"{table} ({', '.join(columns)})"
        for table, wanted in REQUIRED_UNIQUE_KEYS.items()
        for columns in wanted
        if columns not in present.get(table, [])
    ]
