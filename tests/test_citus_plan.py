"""The store past one primary: the Citus DDL of docs/scaling.md, checked against the schema.

docs/scaling.md, "Past one primary: Citus, distributed by `db_id`". Citus is not
installed here, so the DDL is not run; it is read from the page and held against the
catalog of a migrated database: every table named exactly once, every distributed
table distributed by db_id and co-located with profiles, its primary and unique keys
leading with db_id, every foreign key one that Citus accepts, and the order such that
each table comes after the tables it points at.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

SCALING_DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
SECTION = "## Past one primary: Citus, distributed by `db_id`"
_CALL = re.compile(
    r"^SELECT create_(?P<kind>distributed|reference)_table\('(?P<table>\w+)'"
    r"(?:, '(?P<column>\w+)')?(?:, colocate_with => '(?P<colocate>\w+)')?\);$"
)


@dataclass(frozen=True)
class Step:
    kind: str  # "distributed" or "reference"
    table: str
    column: str | None
    colocate: str | None


def plan() -> list[Step]:
    """The statements of the section's `sql` block, in order; any other line fails."""
    section = SCALING_DOC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```sql\n(.*?)```", section, re.DOTALL)
    steps = []
    for line in block.splitlines():
        if not line.strip() or line.startswith("--"):
            continue
        match = _CALL.match(line)
        assert match, f"not a create_distributed_table or create_reference_table call: {line!r}"
        steps.append(Step(match["kind"], match["table"], match["column"], match["colocate"]))
    return steps


def tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
    ).fetchall()
    return {name for (name,) in rows}


def key_columns(conn: psycopg.Connection) -> dict[str, list[list[str]]]:
    """Each table's primary and unique keys, as lists of column names in key order."""
    rows = conn.execute(
        """
        SELECT c.relname, array_agg(a.attname ORDER BY k.ord)
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
        WHERE n.nspname = current_schema() AND (i.indisprimary OR i.indisunique)
        GROUP BY c.relname, i.indexrelid
        """
    ).fetchall()
    found: dict[str, list[list[str]]] = {}
    for table, columns in rows:
        found.setdefault(table, []).append(list(columns))
    return found


def foreign_keys(conn: psycopg.Connection) -> list[tuple[str, str, list[str]]]:
    """(table, referenced table, the referencing columns) of every foreign key."""
    rows = conn.execute(
        """
        SELECT c.relname, r.relname,
               array(SELECT a.attname FROM unnest(f.conkey) WITH ORDINALITY AS k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.attnum ORDER BY k.ord)
        FROM pg_constraint f
        JOIN pg_class c ON c.oid = f.conrelid
        JOIN pg_class r ON r.oid = f.confrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE f.contype = 'f' AND n.nspname = current_schema()
        """
    ).fetchall()
    return [(table, target, list(columns)) for table, target, columns in rows]


@pytest.fixture
def catalog(database: str) -> psycopg.Connection:
    with psycopg.connect(database) as conn:
        yield conn


def test_every_table_of_the_schema_is_named_exactly_once(catalog: psycopg.Connection) -> None:
    named = [step.table for step in plan()]
    twice = sorted({t for t in named if named.count(t) > 1})
    assert twice == [], f"named more than once: {twice}"
    assert set(named) == tables(catalog), (
        f"in the schema, not in docs/scaling.md: {sorted(tables(catalog) - set(named))}; "
        f"in docs/scaling.md, not in the schema: {sorted(set(named) - tables(catalog))}"
    )


def test_distributed_tables_go_by_db_id_with_profiles_and_their_keys_lead_with_it(
    catalog: psycopg.Connection,
) -> None:
    steps = plan()
    distributed = [s for s in steps if s.kind == "distributed"]
    assert distributed and distributed[0].table == "profiles" and distributed[0].colocate is None
    assert all(s.column == "db_id" for s in distributed), distributed
    assert all(s.colocate == "profiles" for s in distributed[1:]), distributed
    assert all(s.column is None and s.colocate is None for s in steps if s.kind == "reference")
    keys = key_columns(catalog)
    wrong = [(s.table, columns) for s in distributed for columns in keys.get(s.table, [])
             if columns[0] != "db_id"]
    assert wrong == [], f"primary or unique keys of distributed tables not led by db_id: {wrong}"
    assert all(keys.get(s.table) for s in distributed), "a distributed table without a primary key"


def test_every_foreign_key_is_one_citus_accepts_and_points_backwards(catalog: psycopg.Connection) -> None:
    steps = plan()
    kind = {s.table: s.kind for s in steps}
    position = {s.table: i for i, s in enumerate(steps)}
    fks = foreign_keys(catalog)
    assert fks, "the schema has foreign keys; none were read"
    for table, target, columns in fks:
        assert position[target] < position[table], f"{table} comes before {target}, which it points at"
        if kind[table] == "reference":
            assert kind[target] == "reference", f"reference table {table} points at distributed {target}"
        elif kind[target] == "distributed":
            # Between distributed tables: co-located, and on a key holding the distribution column.
            assert "db_id" in columns, f"{table} -> {target} ({columns}) lacks db_id"
