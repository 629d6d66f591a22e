"""Plugins: the registry, refusals at start, schema fragments, and the public API `dbimport.api`.

docs/writing-a-matcher.md: a plugin's registration and its refusals at start, a mode's
schema fragment, the single-message form, and what plugins may import.

The committed-events hook is tested with the trigger events (test_triggers.py); a real
third-party package, installed, in test_third_party_plugin.py; the guide's own
examples in test_hook_docs.py.
"""
from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import BUILT_IN_MODES, msg
from dbimport import api, hookspecs
from dbimport.catalog import Database
from dbimport.errors import BadInput, PluginError
from dbimport.events import TriggerEvent
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup, canonical
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.plugins import BUILTIN_PLUGINS, Registry, get_plugin_manager
from dbimport.profile_data import ProfileWrite
from dbimport.worker import RunLimits, Worker

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "writing-a-matcher.md"
PLUGIN_SOURCES = sorted([*(ROOT / "matchers").rglob("*.py"), *(ROOT / "examples").rglob("*.py")])


class NicknameMatcher(Matcher):
    """A plugin author's minimal matcher: `prepare` and the single-message `find`.

    It matches the message's `nick` on the custom field `nickname` (declared
    for database 1 by the seed), and a created profile holds it.
    """

    name = "nick"
    schema = {"required": ["nick"], "properties": {"nick": {"type": "string"}}}
    description = "a nickname, case-insensitive"

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        nick = message["nick"].strip().lower()
        if not nick:
            raise BadInput("nick is empty", field="nick")
        return Query(keys=(Key("field:nickname", canonical(nick)),), matching_field="nick", values={"nick": nick})

    def find(self, lookup: Lookup, query: Query) -> Found:
        [ids] = lookup.profiles_by_field("nickname", [query.values["nick"]])
        return Found.of(ids, "nick")

    def new_profile(self, query: Query) -> ProfileWrite:
        return ProfileWrite(values={"nickname": query.values["nick"]})


class Plugin:
    """A plugin object registering `matchers`; `__name__` is its plugin name."""

    def __init__(self, name: str, *matchers: Any) -> None:
        self.__name__ = name
        self.matchers = list(matchers)

    @hookimpl
    def dbimport_register_matchers(self) -> list[Any]:
        return self.matchers


def matcher(mode: str, **attributes: Any) -> Matcher:
    """A NicknameMatcher under another mode name (and other attributes)."""
    return type(f"Matcher_{mode}", (NicknameMatcher,), {"name": mode, **attributes})()


def plugin_manager(*plugins: Any) -> Any:
    # No entry points: an installed third-party package must not change these tests.
    return get_plugin_manager(entry_points=False, extra_plugins=plugins)


# --- registration and refusals at start ----------------------------------------------


def test_given_two_plugins_with_one_mode_name_when_starting_then_the_error_names_both():
    pm = plugin_manager(Plugin("acme_cards", matcher("card")), Plugin("globex_cards", matcher("card")))

    with pytest.raises(PluginError) as caught:
        Registry(pm)

    text = str(caught.value)
    assert "'card'" in text and "acme_cards" in text and "globex_cards" in text, text


def test_given_a_plugin_reusing_a_built_in_mode_when_starting_then_the_worker_does_not_start(settings):
    pm = plugin_manager(Plugin("acme_email", matcher("email")))

    with pytest.raises(PluginError) as caught:
        Worker(settings, plugin_manager=pm)

    assert "dbimport.matchers.email" in str(caught.value) and "acme_email" in str(caught.value)


class Misspelled:
    """A plugin whose hook name lacks its final `s`."""

    __name__ = "acme_typo"

    @hookimpl
    def dbimport_register_matcher(self) -> list[Matcher]:
        return [NicknameMatcher()]


def test_given_a_misspelled_hook_when_building_the_plugin_manager_then_check_pending_refuses_it():
    with pytest.raises(PluginError) as caught:
        plugin_manager(Misspelled())

    assert "dbimport_register_matcher" in str(caught.value)


def test_given_a_misspelled_hook_when_refused_then_the_error_gives_the_plugins_name():
    """The plugin's registered name, as `dbimport-worker matchers` and the other
    plugin errors give it (an entry point's name), not the object's repr."""
    with pytest.raises(PluginError) as caught:
        plugin_manager(Misspelled())

    assert "plugin acme_typo " in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "registered, complaint",
    [
        ({"name": "dict_mode"}, "not a dbimport.matcher.Matcher"),
        (matcher("Bad-Mode"), "not a lower-case identifier"),
        (matcher(""), "not a lower-case identifier"),
        (matcher("bad_schema", schema={"required": "nick"}), "not valid JSON Schema"),
        (matcher("bad_type", schema={"properties": {"nick": {"type": "text"}}}), "not valid JSON Schema"),
    ],
    ids=["not-a-matcher", "mode-name-with-capitals", "empty-mode-name", "required-not-a-list", "unknown-type"],
)
def test_given_a_broken_registration_when_starting_then_it_is_refused_naming_the_plugin(registered, complaint):
    pm = plugin_manager(Plugin("acme_broken", registered))

    with pytest.raises(PluginError) as caught:
        Registry(pm)

    assert "acme_broken" in str(caught.value) and complaint in str(caught.value), str(caught.value)


def test_built_in_modes_are_plugins_registered_through_the_same_hook():
    """Every built-in module's `plugin` is a matcher, a plugin with a
    `dbimport_register_matchers` hookimpl, and the registry holds exactly what the hooks
    returned: no mode is hard-wired."""
    for module_name in BUILTIN_PLUGINS:
        plugin = importlib.import_module(module_name).plugin
        hook = getattr(plugin, "dbimport_register_matchers", None)
        assert hook is not None and hasattr(hook, f"{hookspecs.PROJECT_NAME}_impl"), module_name

    registry = Registry(plugin_manager())
    assert set(registry) == set(BUILT_IN_MODES)
    assert {r.plugin for r in registry.registrations()} == set(BUILTIN_PLUGINS)

    # A manager holding one built-in module serves that module's modes and no other.
    import pluggy

    bare = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    bare.add_hookspecs(hookspecs)
    bare.register(importlib.import_module("dbimport.matchers.phone").plugin, name="dbimport.matchers.phone")
    assert list(Registry(bare)) == ["phone"]


# --- the schema fragment in the message validator --------------------------------------


def test_given_a_plugin_mode_when_a_message_lacks_its_required_key_then_400_names_the_key(harness):
    pm = plugin_manager(Plugin("acme_nick", NicknameMatcher()))
    harness.publish(
        msg(matching="nick", feedback_id="missing"),
        msg(matching="nick", nick=7, feedback_id="mistyped"),
        msg(matching="nick", nick="Ada", feedback_id="fine"),
        msg(nick="Ada", email="ada@example.com", feedback_id="other-mode"),
    )

    Worker(harness.settings, plugin_manager=pm).run(RunLimits(until_empty=True))

    results = {r["feedback_id"]: r for r in harness.results()}
    assert results["missing"]["error"] == 400 and results["missing"]["error_text"] == "nick is required"
    assert results["mistyped"]["error"] == 400 and "nick must be a string" in results["mistyped"]["error_text"]
    assert results["fine"]["error"] == 0 and results["fine"]["matching_field"] == "nick"
    # The fragment binds its own mode only: the email mode ignores `nick`.
    assert results["other-mode"]["error"] == 0 and results["other-mode"]["matching_field"] == "email"


# --- the single-message form in a batch -------------------------------------------------


def test_given_a_matcher_with_only_find_when_a_batch_repeats_values_then_one_profile_per_value(harness):
    """Given a matcher with `prepare` and `find` only, when one batch holds 20
    nicknames three times each (create, update, update, interleaved), then each
    nickname has one profile, the messages apply in order, and every one is answered."""
    nicks = [f"Nick{i:02d}" for i in range(20)]
    messages = [
        msg(matching="nick", nick=f" {nick.upper() if rnd else nick} ", data={"_fname": f"v{rnd}"},
            feedback_id=f"{nick}/{rnd}")
        for rnd in range(3) for nick in nicks
    ]
    harness.publish(*messages)
    settings = harness.settings.replace(batch_size=len(messages), batch_wait_ms=500)

    stats = Worker(settings, plugin_manager=plugin_manager(Plugin("acme_nick", NicknameMatcher()))).run(
        RunLimits(until_empty=True)
    )

    assert stats.batches == 1, "the messages were meant to arrive as one batch"
    results = {r["feedback_id"]: r for r in harness.results()}
    assert len(results) == len(messages)
    assert all(r["error"] == 0 for r in results.values()), [r for r in results.values() if r["error"]]
    for nick in nicks:
        assert len({results[f"{nick}/{rnd}"]["profile_id"] for rnd in range(3)}) == 1, nick
    rows = harness.rows("SELECT fields->>'nickname', fields->>'_fname' FROM profiles ORDER BY 1")
    assert rows == [(nick.lower(), "v2") for nick in nicks]
    kinds = harness.rows("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind")
    assert kinds == [("profile_created", 20), ("profile_updated", 40)]


# --- declarations a matcher depends on ------------------------------------------------------


class DeclareThenPublish:
    """After the first batch commits, declares a field and publishes a message matching on it:
    a declaration made while the worker runs, deterministically between two batches."""

    __name__ = "acme_declare"

    def __init__(self, harness: Any, message: dict[str, Any]) -> None:
        self.harness = harness
        self.message: dict[str, Any] | None = message

    @hookimpl
    def dbimport_events_committed(self, events: Sequence[TriggerEvent]) -> None:
        if self.message is None:
            return
        with psycopg.connect(self.harness.settings.postgres_dsn) as conn:
            conn.execute("INSERT INTO database_fields (db_id, name, type) VALUES (1, 'member_no', 'string')")
        self.harness.publish(self.message)
        self.message = None


def test_given_a_field_declared_while_the_worker_runs_when_a_mode_matches_on_it_then_it_is_seen(
    harness, monkeypatch
):
    """Matchers read declarations from the worker's cached catalog. A declaration
    made while workers run must reach them within RELOAD_MAX_AGE_S (here 0 s),
    even when no message's `data` names the new field."""
    import dbimport.catalog

    monkeypatch.setattr(dbimport.catalog, "RELOAD_MAX_AGE_S", 0.0)
    later = msg(matching="custom", field_name="member_no", field_value="M-1", feedback_id="after")
    harness.publish(msg(email="first@example.com", feedback_id="before"))

    Worker(harness.settings, plugin_manager=plugin_manager(DeclareThenPublish(harness, later))).run(
        RunLimits(until_empty=True)
    )

    results = {r["feedback_id"]: r for r in harness.results()}
    assert results["before"]["error"] == 0
    assert results["after"]["error"] == 0, results["after"]


# --- the public API: dbimport.api ----------------------------------------------------------


def dbimport_imports(path: Path) -> list[str]:
    """The dbimport modules a file imports, statically (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "dbimport"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "dbimport":
                found += [node.module] if node.module != "dbimport" else [f"dbimport.{a.name}" for a in node.names]
    return found


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_dbimport_api_and_nothing_else_of_dbimport(path: Path) -> None:
    """The built-in modes and the example package are written as a third party writes a
    plugin: against `dbimport.api` only."""
    assert set(dbimport_imports(path)) <= {"dbimport.api"}, dbimport_imports(path)


def test_the_guide_imports_from_dbimport_api_only() -> None:
    code = "\n".join(re.findall(r"^```python[^\n]*\n(.*?)^```", GUIDE.read_text(), re.MULTILINE | re.DOTALL))
    imported = set(re.findall(r"^(?:from|import) (dbimport(?:\.\w+)*)(?!\w)", code, re.MULTILINE))
    assert imported == {"dbimport.api"}, imported


def test_every_public_name_is_in_the_guide() -> None:
    spans = re.findall(r"`([^`\n]+)`", GUIDE.read_text())
    missing = [name for name in api.__all__ if not any(re.search(rf"\b{name}\b", span) for span in spans)]
    assert not missing, f"the guide does not name: {missing}"


def test_every_public_name_exists_and_the_version_is_semantic() -> None:
    assert all(hasattr(api, name) for name in api.__all__)
    assert len(set(api.__all__)) == len(api.__all__)
    assert re.fullmatch(r"\d+\.\d+", api.API_VERSION)


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "matchers":
        parts = ["dbimport", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the dbimport modules it imports, statically, `if TYPE_CHECKING` included."""
    sources = [*(ROOT / "dbimport").rglob("*.py"), *(ROOT / "matchers").rglob("*.py")]
    modules = {module_name(p): p for p in sources}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from package import module` depends on the module; `from module import name` on it.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def test_the_import_graph_has_no_cycles() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
