"""Seed files: accounts, databases, resources and field declarations, loaded idempotently."""
from __future__ import annotations

import importlib.resources
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import psycopg

from .errors import ConfigError
from .store import Store

SCHEMA_FILE = "seed.json"


def read_seed(path: str | Path) -> dict[str, Any]:
    """The seed file, checked against `schemas/seed.json`; ConfigError naming the spot."""
    try:
        seed = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read seed file: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(str(path), f"seed file is not valid JSON ({exc})") from None
    schema = orjson.loads(importlib.resources.files("dbimport.schemas").joinpath(SCHEMA_FILE).read_bytes())
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(seed))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ConfigError(str(path), f"seed file at {where}: {error.message}")
    checked: dict[str, Any] = seed
    return checked


def load_seed(store: Store, seed: Mapping[str, Any]) -> Counter[str]:
    """Insert what is new, update names and options; count rows added or changed.

    Never deletes. A field whose type differs from its stored declaration is
    refused: profiles may already hold values of the old type.
    """
    changed: Counter[str] = Counter()
    with store.transaction() as conn:
        for account in seed.get("accounts", []):
            account_id = account["id"]
            changed["accounts"] += _upsert(
                conn,
                "INSERT INTO accounts (account_id) VALUES (%s) ON CONFLICT DO NOTHING",
                (account_id,),
            )
            for db in account.get("databases", []):
                _check_owner(conn, "databases", "db_id", db["id"], account_id)
                changed["databases"] += _upsert(
                    conn,
                    "INSERT INTO databases (db_id, account_id, name) VALUES (%s, %s, %s) "
                    "ON CONFLICT (db_id) DO UPDATE SET name = EXCLUDED.name "
                    "WHERE databases.name IS DISTINCT FROM EXCLUDED.name",
                    (db["id"], account_id, db.get("name", "")),
                )
                for decl in db.get("fields", []):
                    changed["database_fields"] += _upsert_field(
                        conn, "database_fields", ("db_id",), (db["id"],), decl
                    )
            for res in account.get("resources", []):
                changed["resources"] += _upsert(
                    conn,
                    "INSERT INTO resources (account_id, resource_id, name) VALUES (%s, %s, %s) "
                    "ON CONFLICT (account_id, resource_id) DO UPDATE SET name = EXCLUDED.name "
                    "WHERE resources.name IS DISTINCT FROM EXCLUDED.name",
                    (account_id, res["id"], res.get("name", "")),
                )
                for decl in res.get("fields", []):
                    changed["resource_fields"] += _upsert_field(
                        conn, "resource_fields", ("account_id", "resource_id"), (account_id, res["id"]), decl
                    )
                for db_id in res.get("databases", []):
                    _check_owner(conn, "databases", "db_id", db_id, account_id, strict=True)
                    changed["resource_databases"] += _upsert(
                        conn,
                        "INSERT INTO resource_databases (db_id, account_id, resource_id) "
                        "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (db_id, account_id, res["id"]),
                    )
    return changed


def _upsert(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> int:
    return conn.execute(query.encode(), params).rowcount


def _check_owner(
    conn: psycopg.Connection[Any], table: str, column: str, ident: int, account_id: int,
    *, strict: bool = False,
) -> None:
    row = conn.execute(
        f"SELECT account_id FROM {table} WHERE {column} = %s".encode(),
        (ident,),
    ).fetchone()
    if row is None and strict:
        raise ConfigError("seed", f"{column} {ident} is linked but not declared by account {account_id}")
    if row is not None and row[0] != account_id:
        raise ConfigError("seed", f"{column} {ident} belongs to account {row[0]}, not {account_id}")


def _upsert_field(
    conn: psycopg.Connection[Any], table: str, owner_columns: tuple[str, ...],
    owner: tuple[int, ...], decl: Mapping[str, Any],
) -> int:
    where = " AND ".join(f"{c} = %s" for c in owner_columns)
    row = conn.execute(
        f"SELECT type FROM {table} WHERE {where} AND name = %s".encode(),
        (*owner, decl["name"]),
    ).fetchone()
    if row is not None and row[0] != decl["type"]:
        raise ConfigError(
            "seed",
            f"field {decl['name']} of {table.split('_')[0]} {owner[-1]} is declared {row[0]}; "
            f"the seed says {decl['type']} (changing a field's type is not supported)",
        )
    columns = ", ".join(owner_columns)
    placeholders = ", ".join(["%s"] * (len(owner_columns) + 3))
    return _upsert(
        conn,
        f"INSERT INTO {table} ({columns}, name, type, options) VALUES ({placeholders}) "
        f"ON CONFLICT ({columns}, name) DO UPDATE SET options = EXCLUDED.options "
        f"WHERE {table}.options IS DISTINCT FROM EXCLUDED.options",
        (*owner, decl["name"], decl["type"], list(decl.get("options", []))),
    )
