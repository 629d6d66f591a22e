"""The plugin API: registration, refusals at start, schema fragments, the single-message form."""
from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import pytest

from conftest import msg
from dbimport import hookspecs
from dbimport.catalog import Database
from dbimport.errors import BadInput, PluginError
from dbimport.events import TriggerEvent
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup, canonical
from dbimport.matcher import Found, Key, Matcher, Query
from dbimport.plugins import BUILTIN_PLUGINS, Registry, get_plugin_manager
from dbimport.profile_data import ProfileWrite
from dbimport.worker import RunLimits, Worker

SPEC_MODES = {
    "email", "email_profile", "email_sub", "phone", "phone_sub", "profile_id",
    "push_sub", "custom", "custom_sub", "email_phone", "email_phone_sub",
}


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
    assert set(registry) == SPEC_MODES
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


# --- the hook after commit ----------------------------------------------------------------


class EventWatcher:
    """A plugin told of committed events; it reads the store while it is told."""

    __name__ = "acme_events"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.batches: list[list[TriggerEvent]] = []
        self.committed_rows_seen: list[int] = []

    @hookimpl
    def dbimport_events_committed(self, events: Sequence[TriggerEvent]) -> None:
        self.batches.append(list(events))
        # Another connection sees the rows only if the batch has committed.
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
        self.committed_rows_seen.append(int(row[0]) if row else 0)
        raise RuntimeError("a broken plugin must not undo the batch")


def test_given_a_plugin_with_the_events_hook_when_a_batch_commits_then_it_is_told_after_commit(harness):
    watcher = EventWatcher(harness.settings.postgres_dsn)
    harness.publish(
        msg(email="told@example.com", data={"_fname": "A"}, feedback_id="create"),
        msg(email="told@example.com", data={"_fname": "B"}, feedback_id="update"),
        msg(email="quiet@example.com", skip_triggers=True, feedback_id="quiet"),
    )

    Worker(harness.settings, plugin_manager=plugin_manager(watcher)).run(RunLimits(until_empty=True))

    results = {r["feedback_id"]: r for r in harness.results()}
    assert [results[f]["error"] for f in ("create", "update", "quiet")] == [0, 0, 0]
    told = [(e.profile_id, e.kind, e.feedback_id) for batch in watcher.batches for e in batch]
    stored = harness.rows("SELECT profile_id, kind, feedback_id FROM events ORDER BY event_id")
    assert told == stored == [
        (results["create"]["profile_id"], "profile_created", "create"),
        (results["create"]["profile_id"], "profile_updated", "update"),
    ]
    assert watcher.committed_rows_seen and watcher.committed_rows_seen[-1] == len(stored)
    # The hook raised: the writes stand.
    assert harness.count("SELECT count(*) FROM profiles") == 2


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
