"""The store's schema and `init-db --seed`: creation, idempotence, keys that lead with the tenant, seed errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from conftest import ADMIN_DSN, SEED_FILE
from dbimport.config import CONFIG_PATH_ENV, keys
from dbimport.errors import ConfigError
from dbimport.fields import SYSTEM_FIELDS
from dbimport.lookup import PROFILES_BY_FIELD, Lookup
from dbimport.migrations import current_version, migrations, unique_keys
from dbimport.seed import read_seed
from dbimport.store import with_database

EX_OK, EX_CONFIG = 0, 78
# Account-level tables are keyed by the account; every other table by the profile database.
ACCOUNT_LEVEL_TABLES = {"accounts", "resources", "resource_fields"}
BOOKKEEPING_TABLES = {"dbimport_schema"}
# The tables the contract's data lives in (docs/contract.md: accounts, databases, resources,
# field declarations, profiles, subscriptions, trigger events).
EXPECTED_TABLES = {
    "accounts", "databases", "resources", "resource_databases", "database_fields",
    "resource_fields", "profiles", "subscriptions", "events",
}


def init_db(tmp_path: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`init-db` in a process of its own, configured only by POSTGRES_DSN."""
    env = {k: v for k, v in os.environ.items() if k not in keys() and k != CONFIG_PATH_ENV}
    config = tmp_path / "main.json"
    config.write_text("{}")
    env.update({CONFIG_PATH_ENV: str(config), "POSTGRES_DSN": dsn, "JOB_SERVER_LOG": str(tmp_path / "job_server.log")})
    return subprocess.run(
        [sys.executable, "-m", "dbimport", "init-db", *args], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )


def database_exists(name: str) -> bool:
    with psycopg.connect(ADMIN_DSN) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


@pytest.fixture
def new_database(services: None) -> Iterator[str]:
    """The name of a database that does not exist yet; dropped afterwards if a test made it."""
    name = f"dbimport_test_initdb_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def snapshot(dsn: str) -> dict[str, list[str]]:
    """Every row of every table, as sorted JSON text: two equal snapshots hold the same data."""
    with psycopg.connect(dsn) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")]
        return {
            table: sorted(row[0] for row in conn.execute(
                sql.SQL("SELECT to_jsonb(t)::text FROM {} AS t").format(sql.Identifier(table))))
            for table in tables
        }


def write_seed(tmp_path: Path, seed: Any, name: str = "seed.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(seed))
    return path


# --- init-db --------------------------------------------------------------------------


def test_init_db_creates_a_missing_database_and_a_second_run_changes_nothing(
    tmp_path: Path, new_database: str,
) -> None:
    dsn = with_database(ADMIN_DSN, new_database)
    assert not database_exists(new_database)

    first = init_db(tmp_path, dsn, "--seed", str(SEED_FILE))
    assert first.returncode == EX_OK, first.stderr
    assert "database: created" in first.stdout
    assert database_exists(new_database)
    before = snapshot(dsn)
    assert EXPECTED_TABLES <= set(before)
    assert len(before["accounts"]) == 2 and len(before["databases"]) == 3
    assert len(before["database_fields"]) == 12 and len(before["resource_fields"]) == 2
    assert len(before["resource_databases"]) == 4
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT max(version) FROM dbimport_schema").fetchone() == (current_version(),)

    second = init_db(tmp_path, dsn, "--seed", str(SEED_FILE))
    assert second.returncode == EX_OK, second.stderr
    assert "database: exists" in second.stdout
    assert "nothing new" in second.stdout
    assert snapshot(dsn) == before


def test_init_db_with_a_changed_seed_adds_what_is_new_and_keeps_the_rest(
    tmp_path: Path, new_database: str,
) -> None:
    dsn = with_database(ADMIN_DSN, new_database)
    assert init_db(tmp_path, dsn, "--seed", str(SEED_FILE)).returncode == EX_OK
    before = snapshot(dsn)

    seed = json.loads(SEED_FILE.read_text())
    account_1 = seed["accounts"][0]
    account_1["databases"][0]["fields"].append({"name": "loyalty_points", "type": "int"})
    account_1["resources"].append({"id": 27, "name": "Alerts", "databases": [1],
                                   "fields": [{"name": "channel_pref", "type": "string"}]})
    seed["accounts"].append({"id": 3, "databases": [{"id": 9, "name": "Third", "fields": []}]})
    done = init_db(tmp_path, dsn, "--seed", str(write_seed(tmp_path, seed, "seed-v2.json")))
    assert done.returncode == EX_OK, done.stderr

    after = snapshot(dsn)
    for table, rows in before.items():
        if table in BOOKKEEPING_TABLES:
            continue
        assert set(rows) <= set(after[table]), f"{table} lost or changed rows"
    with psycopg.connect(dsn) as conn:
        new_rows = {
            "field": conn.execute("SELECT type FROM database_fields WHERE db_id = 1 AND name = 'loyalty_points'").fetchall(),
            "resource": conn.execute("SELECT name FROM resources WHERE account_id = 1 AND resource_id = 27").fetchall(),
            "link": conn.execute("SELECT 1 FROM resource_databases WHERE db_id = 1 AND resource_id = 27").fetchall(),
            "resource field": conn.execute(
                "SELECT type FROM resource_fields WHERE resource_id = 27 AND name = 'channel_pref'").fetchall(),
            "account": conn.execute("SELECT 1 FROM accounts WHERE account_id = 3").fetchall(),
            "database": conn.execute("SELECT account_id, name FROM databases WHERE db_id = 9").fetchall(),
        }
    assert new_rows == {
        "field": [("int",)], "resource": [("Alerts",)], "link": [(1,)],
        "resource field": [("string",)], "account": [(1,)], "database": [(3, "Third")],
    }
    # Exactly those six rows are new.
    assert sum(len(after[t]) - len(before.get(t, [])) for t in after if t not in BOOKKEEPING_TABLES) == 6


@pytest.mark.parametrize("seed, spot", [
    ({"accounts": [{"id": "one"}]}, "accounts/0/id"),
    ({"accounts": [{"id": 1, "databases": [{"name": "no id"}]}]}, "accounts/0/databases/0"),
    ({"accounts": [{"id": 1, "databases": [{"id": 1, "fields": [{"name": "x", "type": "integer"}]}]}]},
     "accounts/0/databases/0/fields/0/type"),
])
def test_a_seed_with_an_error_exits_78_naming_the_spot_and_creates_nothing(
    tmp_path: Path, new_database: str, seed: Any, spot: str,
) -> None:
    done = init_db(tmp_path, with_database(ADMIN_DSN, new_database), "--seed", str(write_seed(tmp_path, seed)))
    assert done.returncode == EX_CONFIG, (done.stdout, done.stderr)
    message = [line for line in done.stderr.splitlines() if f"seed file at {spot}:" in line]
    assert len(message) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not database_exists(new_database)


@pytest.mark.parametrize("seed, spot, says", [
    ({"accounts": [{"id": 1, "resources": [{"id": 0}]}]}, "accounts/0/resources/0/id", "minimum"),
    ({"accounts": [{"id": 1, "databases": [{"id": 1, "fields": [{"name": "tier", "type": "list"}]}]}]},
     "accounts/0/databases/0/fields/0", "options"),
    ({"accounts": [{"id": 1, "databases": [{"id": 1, "fields": [{"name": "9lives", "type": "int"}]}]}]},
     "accounts/0/databases/0/fields/0/name", "does not match"),
    ({"accounts": [{"id": 1, "extra": True}]}, "accounts/0", "extra"),
    ({"databases": []}, "(top level)", "accounts"),
])
def test_seed_errors_name_the_spot_and_the_reason(tmp_path: Path, seed: Any, spot: str, says: str) -> None:
    path = write_seed(tmp_path, seed)
    with pytest.raises(ConfigError) as raised:
        read_seed(path)
    assert f"at {spot}:" in str(raised.value)
    assert says in str(raised.value)


def test_a_seed_that_is_not_json_exits_78(tmp_path: Path, new_database: str) -> None:
    path = tmp_path / "seed.json"
    path.write_text('{"accounts": [')
    done = init_db(tmp_path, with_database(ADMIN_DSN, new_database), "--seed", str(path))
    assert done.returncode == EX_CONFIG
    assert str(path) in done.stderr


# --- keys and checks ------------------------------------------------------------------


def test_every_primary_and_unique_key_includes_the_tenant(database: str) -> None:
    """So that the tables can be distributed by db_id (Citus), account tables by account_id."""
    with psycopg.connect(database) as conn:
        found = unique_keys(conn)
    assert EXPECTED_TABLES <= set(found)
    wrong = [
        (table, columns)
        for table, table_keys in found.items() if table not in BOOKKEEPING_TABLES
        for columns in table_keys
        if ("account_id" if table in ACCOUNT_LEVEL_TABLES else "db_id") not in columns
    ]
    assert wrong == []


def test_every_table_has_a_primary_key(database: str) -> None:
    with psycopg.connect(database) as conn:
        without = conn.execute(
            """
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relkind = 'r'
              AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
            """
        ).fetchall()
    assert without == []


def test_the_index_of_custom_fields_leaves_out_exactly_the_system_fields() -> None:
    """The index expression names every system field a message may set, and nothing else."""
    text = "".join(m.sql for m in migrations())
    listed = re.search(r"fields - '\{([^}]*)\}'::text\[\]", text)
    assert listed is not None
    assert set(listed.group(1).split(",")) == set(SYSTEM_FIELDS)


def test_custom_field_look_ups_are_answered_from_the_index_of_custom_fields(database: str) -> None:
    """Given 3,000 profiles with a system and a custom field, a custom look-up finds by the
    custom field only, and its plan probes the index (not a scan of the database)."""
    with psycopg.connect(database) as conn:
        conn.execute(
            "INSERT INTO profiles (db_id, profile_id, fields) SELECT 1, lpad(to_hex(i), 24, '0'), "
            "jsonb_build_object('_fname', 'F' || i, 'CRM_ID', i) FROM generate_series(1, 3000) AS i"
        )
        conn.execute("ANALYZE profiles")
        lookup = Lookup(conn, 1)
        assert lookup.profiles_by_field("CRM_ID", [5, 3001]) == [{"5".rjust(24, "0")}, set()]
        assert lookup.profiles_by_field("_fname", ["F5"]) == [set()]
        plan = "\n".join(row[0] for row in conn.execute(
            ("EXPLAIN " + PROFILES_BY_FIELD).encode(), ([Jsonb({"CRM_ID": 5})], 1)))
    assert "profiles_custom_fields_idx" in plan, plan


@pytest.mark.parametrize("profile_id, valid", [
    ("5f4fa1a5ce9448665fef548e", True),
    ("5F4FA1A5CE9448665FEF548E", False),
    ("5f4fa1a5ce9448665fef548", False),
    ("5f4fa1a5ce9448665fef548e0", False),
    ("5f4fa1a5ce9448665fef548g", False),
    ("", False),
    (" 5f4fa1a5ce9448665fef548e", False),
])
def test_the_schema_accepts_only_24_lowercase_hex_profile_ids(database: str, profile_id: str, valid: bool) -> None:
    with psycopg.connect(database) as conn:
        insert = "INSERT INTO profiles (db_id, profile_id) VALUES (1, %s)"
        if valid:
            conn.execute(insert, (profile_id,))
            assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (1,)
        else:
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(insert, (profile_id,))
