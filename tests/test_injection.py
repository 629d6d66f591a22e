"""SQL injection: input reaches PostgreSQL only as data, and SQL text is never built from it.

The runtime tests put SQL in every place a message can carry text (field_name,
field_value, data keys, data values, match values) and check that each is
refused as undeclared or stored verbatim, while every table and every other row
stays as it was and nothing slept. The static test reads the package's source:
every statement's text is a literal, a module constant, a psycopg.sql
composition, or one of a few reviewed interpolations of constants.
"""
from __future__ import annotations

import ast
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Harness, msg

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = [
    "x'); DROP TABLE profiles; --",
    "\" OR 1=1 --",
    "$$; SELECT pg_sleep(10); $$",
    "'; UPDATE profiles SET email = 'owned@example.com' WHERE true; --",
    "1; DELETE FROM subscriptions",
    "\\'; TRUNCATE events CASCADE; --",
    "%s %b %(name)s {0} {}",
    "x' || (SELECT string_agg(email, ',') FROM profiles) || '",
]
# A payload that reached SQL as code would sleep 10 s (or fail): data takes milliseconds.
MAX_RUN_S = 8.0
CANARIES = [
    msg(email="canary1@example.com", feedback_id="canary1", data={"_fname": "Canary", "nickname": "keep"}),
    msg(db_id=2, email="canary2@example.com", feedback_id="canary2", data={"CRM_ID": 7}),
    msg(account_id=2, db_id=3, email="canary3@example.com", feedback_id="canary3"),
    msg(email="canary-sub@example.com", feedback_id="canary4", data={"subscriptions": [
        {"resource_id": 24, "channel": "email", "email": "canary-sub@example.com"}]}),
]


# --- the runtime tests -----------------------------------------------------------------


@dataclass
class Snapshot:
    tables: list[str]
    counts: dict[str, int]
    profiles: dict[tuple[int, str], tuple[Any, ...]]
    subscriptions: list[tuple[Any, ...]]


def snapshot(h: Harness) -> Snapshot:
    tables = [t for (t,) in h.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
    return Snapshot(
        tables=tables,
        # Table names come from pg_tables, not from input.
        counts={t: h.count(f"SELECT count(*) FROM {t}") for t in tables},
        profiles={
            (db_id, pid): rest
            for db_id, pid, *rest in h.rows("SELECT db_id, profile_id, email, phones, fields::text FROM profiles")
        },
        subscriptions=h.rows("SELECT db_id, resource_id, channel, address, profile_id, status FROM subscriptions "
                             "ORDER BY 1, 2, 3, 4"),
    )


@pytest.fixture
def canaries(harness: Harness) -> Iterator[Snapshot]:
    """Profiles in three databases of two accounts, and one subscription, before the attack."""
    results = harness.import_(*CANARIES)
    assert [r["error"] for r in results] == [0] * len(CANARIES), results
    yield snapshot(harness)


def attack(h: Harness, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    """Import `messages`, checking that it took no longer than data takes."""
    h.publish(*messages)
    started = time.monotonic()
    h.run()
    elapsed = time.monotonic() - started
    assert elapsed < MAX_RUN_S, f"the run took {elapsed:.1f} s: did a payload run pg_sleep?"
    results = h.results()
    assert len(results) == len(messages)
    return results


def assert_untouched(h: Harness, before: Snapshot, *, new_profiles: int = 0) -> Snapshot:
    """Every table is still there, every canary row is as it was, and only
    `new_profiles` profiles were added."""
    after = snapshot(h)
    assert after.tables == before.tables
    for key, row in before.profiles.items():
        assert after.profiles.get(key) == row, f"profile {key} changed: {row} -> {after.profiles.get(key)}"
    assert len(after.profiles) == len(before.profiles) + new_profiles
    for row in before.subscriptions:
        assert row in after.subscriptions, f"subscription {row} changed or vanished"
    return after


def test_sql_in_field_name_is_refused_as_an_undeclared_field(harness: Harness, canaries: Snapshot) -> None:
    """Given SQL as the field_name of the custom and custom_sub modes, then each message
    gets 400 naming field_name (no such declared field), and nothing changes."""
    messages = [
        msg(matching=mode, field_name=payload, field_value="1", feedback_id=f"{mode}-{i}")
        for mode in ("custom", "custom_sub") for i, payload in enumerate(PAYLOADS)
    ]
    for message, result in zip(messages, attack(harness, *messages)):
        assert result["error"] == 400, (message, result)
        assert "field_name" in result["error_text"] and "not a field declared" in result["error_text"], result
    after = assert_untouched(harness, canaries)
    assert after.counts == canaries.counts


def test_sql_in_field_value_is_matched_and_stored_as_data(harness: Harness, canaries: Snapshot) -> None:
    """Given SQL as the field_value of a string custom field, then a profile is created
    holding it verbatim, the same message again finds that profile, and an int field
    refuses it with 400."""
    first = [msg(matching="custom", field_name="nickname", field_value=p, feedback_id=f"c{i}")
             for i, p in enumerate(PAYLOADS)]
    again = [msg(matching="custom", field_name="nickname", field_value=p, feedback_id=f"a{i}",
                 data={"_fname": "Again"}) for i, p in enumerate(PAYLOADS)]
    typed = [msg(matching="custom", field_name="CRM_ID", field_value=p, feedback_id=f"t{i}")
             for i, p in enumerate(PAYLOADS)]
    results = attack(harness, *first)
    assert [r["error"] for r in results] == [0] * len(PAYLOADS), results
    again_results = attack(harness, *again, *typed)
    assert [r["profile_id"] for r in again_results[: len(PAYLOADS)]] == [r["profile_id"] for r in results]
    assert [r["error"] for r in again_results[len(PAYLOADS):]] == [400] * len(PAYLOADS)
    for payload, result in zip(PAYLOADS, results):
        assert harness.rows(
            "SELECT fields->>'nickname', fields->>'_fname' FROM profiles WHERE db_id = 1 AND profile_id = %s",
            result["profile_id"],
        ) == [(payload, "Again")]
    assert_untouched(harness, canaries, new_profiles=len(PAYLOADS))


def test_sql_in_data_keys_is_refused_as_undeclared(harness: Harness, canaries: Snapshot) -> None:
    """Given SQL as the name of a data field, of a system field (`_` prefix) or of a
    subscription's custom field, then each gets 400 naming it as undeclared and nothing
    changes; inside an `object` field's value, the same keys are plain data, stored verbatim."""
    refused = [
        *(msg(email=f"k{i}@example.com", feedback_id=f"k{i}", data={payload: "x"})
          for i, payload in enumerate(PAYLOADS)),
        *(msg(email=f"s{i}@example.com", feedback_id=f"s{i}", data={"_" + payload: "x"})
          for i, payload in enumerate(PAYLOADS)),
        *(msg(email=f"c{i}@example.com", feedback_id=f"c{i}", data={"subscriptions": [
            {"resource_id": 24, "channel": "email", "email": f"c{i}@example.com", "custom_fields": {payload: "x"}}]})
          for i, payload in enumerate(PAYLOADS)),
    ]
    for result in attack(harness, *refused):
        assert result["error"] == 400, result
        assert "is not a system field" in result["error_text"] or "not a field declared" in result["error_text"], result
    assert_untouched(harness, canaries)

    prefs = {payload: payload for payload in PAYLOADS}
    [stored] = attack(harness, msg(email="prefs@example.com", data={"prefs": prefs}))
    assert stored["error"] == 0, stored
    stored_prefs = harness.rows("SELECT fields->'prefs' FROM profiles WHERE profile_id = %s", stored["profile_id"])
    assert stored_prefs == [(prefs,)]
    assert_untouched(harness, canaries, new_profiles=1)


def test_sql_in_data_values_is_stored_verbatim(harness: Harness, canaries: Snapshot) -> None:
    """Given SQL in string system fields, a string custom field, a tags list, a
    subscription's address and custom field, and the feedback_id, then every message is
    imported and every value reads back exactly as sent."""
    messages = [
        msg(email=f"v{i}@example.com", feedback_id=payload, data={
            "_fname": payload, "_city": payload, "nickname": payload, "interests": [payload],
            "subscriptions": [
                {"resource_id": 24, "channel": "web", "address": payload,
                 "custom_fields": {"loyalty_card": payload}},
            ],
        })
        for i, payload in enumerate(PAYLOADS)
    ]
    results = attack(harness, *messages)
    assert [(r["error"], r["feedback_id"]) for r in results] == [(0, p) for p in PAYLOADS], results
    for payload, result in zip(PAYLOADS, results):
        pid = result["profile_id"]
        assert harness.rows(
            "SELECT fields->>'_fname', fields->>'_city', fields->>'nickname', fields->'interests' "
            "FROM profiles WHERE db_id = 1 AND profile_id = %s", pid,
        ) == [(payload, payload, payload, [payload])]
        assert harness.rows(
            "SELECT address, custom_fields->>'loyalty_card' FROM subscriptions WHERE db_id = 1 AND profile_id = %s",
            pid,
        ) == [(payload, payload)]
        events = harness.count("SELECT count(*) FROM events WHERE profile_id = %s AND feedback_id = %s", pid, payload)
        assert events >= 1
    assert_untouched(harness, canaries, new_profiles=len(PAYLOADS))


def test_sql_in_match_values_is_matched_as_data_or_refused(harness: Harness, canaries: Snapshot) -> None:
    """Given SQL-looking match values: an e-mail with quotes is a valid address and is
    matched as data; as a profile_id, a phone or a push subscription id, SQL is
    refused (400) or matched as data, never executed."""
    quoted = "o'brien'or'1'='1@example.com"
    messages = [
        msg(email=quoted, feedback_id="quoted"),
        msg(email=quoted.upper(), feedback_id="quoted-again"),
        *(msg(matching="profile_id", profile_id=p, feedback_id=f"pid{i}") for i, p in enumerate(PAYLOADS)),
        *(msg(matching="phone", phone=p, feedback_id=f"ph{i}") for i, p in enumerate(PAYLOADS)),
        *(msg(matching="push_sub", provider="apns", subscription_id=p, resource_id=24, feedback_id=f"push{i}")
          for i, p in enumerate(PAYLOADS)),
    ]
    results = attack(harness, *messages)
    first, again = results[0], results[1]
    assert (first["error"], again["error"]) == (0, 0)
    assert again["profile_id"] == first["profile_id"]
    assert harness.rows("SELECT email FROM profiles WHERE profile_id = %s", first["profile_id"]) == [(quoted,)]
    n = len(PAYLOADS)
    assert [r["error"] for r in results[2: 2 + 2 * n]] == [400] * (2 * n)
    push = results[2 + 2 * n:]
    assert [r["error"] for r in push] == [0] * n
    addresses = harness.rows("SELECT address FROM subscriptions WHERE db_id = 1 AND channel = 'push'")
    assert sorted(a for (a,) in addresses) == sorted(p.strip() for p in PAYLOADS)
    assert_untouched(harness, canaries, new_profiles=1 + n)


# --- the static test: where SQL text comes from -------------------------------------------

SOURCES = sorted([*(ROOT / "dbimport").rglob("*.py"), *(ROOT / "matchers").rglob("*.py")])

# Statements whose text is not a plain literal or constant, each reviewed: (file,
# function) -> the names interpolated into the text, and why none can come from input.
REVIEWED: dict[tuple[str, str], tuple[frozenset[str], str]] = {
    ("dbimport/housekeeping.py", "_delete_chunk"): (
        frozenset({"table", "column"}), "keys and values of the module constant PRUNED_TABLES"),
    ("dbimport/seed.py", "_check_owner"): (
        frozenset({"table", "column"}), "string literals at every call site"),
    ("dbimport/seed.py", "_upsert_field"): (
        frozenset({"table", "where", "columns", "placeholders"}),
        "a literal table name and literal owner-column tuples at every call site; %s placeholders"),
    ("dbimport/migrations/__init__.py", "migrate"): (
        frozenset({"migration.sql"}), "the migration files shipped inside the package"),
}
# Functions that take the statement text as a parameter: each call passes a literal
# (or, for _upsert, the reviewed f-string of _upsert_field).
TEXT_PARAMETERS = {("dbimport/lookup.py", "_aligned"): "query", ("dbimport/seed.py", "_upsert"): "query"}
# Reviewed functions' parameters that end up in SQL text: at every call, a literal,
# a tuple of literals, or a loop variable over a module constant.
IDENTIFIER_PARAMETERS = {
    "_check_owner": {1: "table", 2: "column"},
    "_upsert_field": {1: "table", 2: "owner_columns"},
    "_delete_chunk": {1: "table", 2: "column"},
}


@dataclass(frozen=True)
class Site:
    """One `.execute(...)`: where, and what its statement text is made of."""

    path: str
    function: str
    line: int
    kind: str  # literal | constant | composed | parameter | interpolated | other
    names: frozenset[str] = frozenset()


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            yield node


def _module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    constants: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            constants[node.target.id] = node.value
    return constants


def _all_literal(node: ast.expr) -> bool:
    """A string literal, or a dict/tuple/list of them (a module constant of SQL text)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, int))
    if isinstance(node, ast.Dict):
        return all(k is not None and _all_literal(k) and _all_literal(v) for k, v in zip(node.keys, node.values))
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(_all_literal(e) for e in node.elts)
    return False


def _loop_source(func: ast.FunctionDef, name: str) -> ast.expr | None:
    """The iterable a for-loop or comprehension in `func` binds `name` from."""
    for node in ast.walk(func):
        loops = [node] if isinstance(node, ast.For) else getattr(node, "generators", []) if isinstance(
            node, (ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)) else []
        for loop in loops:
            if any(isinstance(t, ast.Name) and t.id == name for t in ast.walk(loop.target)):
                return loop.iter
    return None


def _constant_iterable(node: ast.expr, constants: dict[str, ast.expr]) -> bool:
    """`CONST`, `CONST.items()` or `CONST.values()` of a module constant of literals."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("items", "values"):
        node = node.func.value
    return isinstance(node, ast.Name) and node.id in constants and _all_literal(constants[node.id])


def classify(expr: ast.expr, func: ast.FunctionDef, constants: dict[str, ast.expr]) -> tuple[str, frozenset[str]]:
    """What a statement's text is made of."""
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "encode":
        return classify(expr.func.value, func, constants)
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return "literal", frozenset()
    if isinstance(expr, ast.JoinedStr):
        names = frozenset(ast.unparse(v.value) for v in expr.values if isinstance(v, ast.FormattedValue))
        return "interpolated", names
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "format"
            and isinstance(expr.func.value, ast.Call) and ast.unparse(expr.func.value.func) == "sql.SQL"
            and all(isinstance(a, ast.Call) and ast.unparse(a.func) in ("sql.Identifier", "sql.Literal")
                    for a in expr.args)):
        return "composed", frozenset()
    if isinstance(expr, ast.Name):
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == expr.id for t in node.targets):
                return classify(node.value, func, constants)
        if expr.id in {a.arg for a in func.args.args}:
            return "parameter", frozenset({expr.id})
        source = _loop_source(func, expr.id)
        if source is not None and _constant_iterable(source, constants):
            return "constant", frozenset()
        if expr.id in constants and _all_literal(constants[expr.id]):
            return "constant", frozenset()
    if isinstance(expr, ast.Attribute):
        return "interpolated", frozenset({ast.unparse(expr)})
    return "other", frozenset({ast.unparse(expr)})


def _imported_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def execute_sites() -> list[Site]:
    """Every `<connection or cursor>.execute(text, ...)` (a module's own `execute` function is not one)."""
    sites = []
    for path in SOURCES:
        tree = ast.parse(path.read_text("utf-8"))
        constants = _module_constants(tree)
        modules = _imported_names(tree)
        rel = path.relative_to(ROOT).as_posix()
        for func in _functions(tree):
            for node in ast.walk(func):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("execute", "executemany") and node.args
                        and not (isinstance(node.func.value, ast.Name) and node.func.value.id in modules)):
                    kind, names = classify(node.args[0], func, constants)
                    sites.append(Site(rel, func.name, node.lineno, kind, names))
    return sites


def calls_to(name: str) -> Iterator[tuple[str, ast.Call, ast.FunctionDef, dict[str, ast.expr]]]:
    for path in SOURCES:
        tree = ast.parse(path.read_text("utf-8"))
        constants = _module_constants(tree)
        for func in _functions(tree):
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and (
                    (isinstance(node.func, ast.Name) and node.func.id == name)
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == name)
                ):
                    yield path.relative_to(ROOT).as_posix(), node, func, constants


def test_no_sql_text_is_built_from_input() -> None:
    """Given the package's source, every statement's text is a literal, a module
    constant, a psycopg.sql composition of identifiers, or one of the reviewed
    interpolations, whose interpolated names are constants at every call site."""
    sites = execute_sites()
    assert len(sites) > 20, "the scan found too few execute() calls to be looking at the right code"
    unreviewed = []
    reviewed_seen = set()
    for site in sites:
        key = (site.path, site.function)
        if site.kind in ("literal", "constant", "composed"):
            continue
        if site.kind == "parameter" and TEXT_PARAMETERS.get(key) in site.names:
            continue
        allowed = REVIEWED.get(key)
        if site.kind == "interpolated" and allowed is not None and site.names <= allowed[0]:
            reviewed_seen.add(key)
            continue
        unreviewed.append(f"{site.path}:{site.line} in {site.function}(): {site.kind} {sorted(site.names)}")
    assert not unreviewed, "SQL text built from something not reviewed:\n" + "\n".join(unreviewed)
    assert reviewed_seen == set(REVIEWED), f"stale review entries: {set(REVIEWED) - reviewed_seen}"

    # Functions taking the statement text get a literal, or _upsert_field's reviewed f-string.
    for (_path, function), _param in TEXT_PARAMETERS.items():
        name = function
        for where, call, caller, constants in calls_to(name):
            text = call.args[1] if len(call.args) > 1 else None
            assert text is not None, f"{where}:{call.lineno}: {name}() without its text"
            kind, names = classify(text, caller, constants)
            ok = kind in ("literal", "constant") or (
                kind == "interpolated" and (where, caller.name) in REVIEWED
                and names <= REVIEWED[(where, caller.name)][0]
            )
            assert ok, f"{where}:{call.lineno}: {name}() is given SQL text of kind {kind} {sorted(names)}"

    # The reviewed functions' identifier parameters are constants at every call.
    for name, positions in IDENTIFIER_PARAMETERS.items():
        calls = list(calls_to(name))
        assert calls, f"no call to {name}() found"
        for where, call, caller, constants in calls:
            for position, param in positions.items():
                arg = call.args[position]
                constant = _all_literal(arg) or (
                    isinstance(arg, ast.Name)
                    and (source := _loop_source(caller, arg.id)) is not None
                    and _constant_iterable(source, constants)
                )
                assert constant, f"{where}:{call.lineno}: {name}({param}=...) is not a constant: {ast.unparse(arg)}"


def test_the_static_scan_notices_sql_built_from_input(tmp_path: Path) -> None:
    """The scan itself can fail: an f-string of a message value in execute() is caught."""
    source = (
        "def bad(conn, message):\n"
        "    name = message['field_name']\n"
        "    conn.execute(f\"SELECT fields->>'{name}' FROM profiles\")\n"
    )
    tree = ast.parse(source)
    [func] = list(_functions(tree))
    call = next(n for n in ast.walk(func) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "execute")
    kind, names = classify(call.args[0], func, _module_constants(tree))
    assert (kind, names) == ("interpolated", frozenset({"name"}))
    assert ("x.py", "bad") not in REVIEWED
