"""The examples of docs/contract.md, run in order through the real worker and checked.

The document's conventions (its section "How to read the examples"):

- a fenced block tagged `json message` is a message, published as compact JSON;
  one tagged `text message` is a raw body, published byte for byte (without the
  block's last newline);
- the next tagged block, `json result`, is the result the message must get;
- a block tagged `json stored` shows a profile as the database holds it once the
  whole sequence has run;
- `"<id:NAME>"` stands for a profile id: 24 lowercase hex characters, the same id
  wherever NAME recurs, and different ids for different names. In a message it is
  replaced by the id bound earlier;
- `<...>` inside an expected string matches any text.

All messages are published in order and one worker drains the queue. A message that
names an id bound by an earlier example's result cannot be written before that result
exists: the messages before it are run first, then publishing goes on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import BUILT_IN_MODES, RESULT_KEYS, Harness
from dbimport.plugins import Registry, get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract.md"
EXAMPLES_SEED = ROOT / "examples" / "seed.json"
TESTS_SEED = ROOT / "tests" / "data" / "seed.json"

_BLOCK = re.compile(r"^```([a-z]+) ?([a-z]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_ID = re.compile(r"<id:([A-Za-z0-9_-]+)>")
_HEX24 = re.compile(r"[0-9a-f]{24}")
_LIMIT = re.compile(r"run with `IMPORT_MAX_MESSAGE_BYTES` set to (\d+)")
WILDCARD = "<...>"
TAGS = {("json", "message"), ("text", "message"), ("json", "result"), ("json", "stored")}
SUBSCRIPTION_COLUMNS = ("resource_id", "channel", "provider", "address", "status", "priority", "custom_fields", "cats")
# What the examples must cover at least: every built-in mode, every error code but 500
# (docs/contract.md, "Error codes": a 500 needs a fault).
REQUIRED_CODES = {0, 400, 403, 404, 409, 413}


@dataclass
class Example:
    line: int
    body: bytes | Any  # raw bytes, or a JSON value still holding "<id:NAME>" placeholders
    expected: dict[str, Any]

    def where(self) -> str:
        return f"docs/contract.md:{self.line}"


@dataclass
class Stored:
    line: int
    expected: dict[str, Any]


@dataclass
class Contract:
    examples: list[Example] = field(default_factory=list)
    stored: list[Stored] = field(default_factory=list)
    max_message_bytes: int = 0


def parse_contract(text: str) -> Contract:
    """The examples and stored profiles of the document, in order; malformed ones fail."""
    contract = Contract()
    limit = _LIMIT.search(text)
    assert limit, "docs/contract.md must say which IMPORT_MAX_MESSAGE_BYTES the examples run with"
    contract.max_message_bytes = int(limit.group(1))
    pending: tuple[int, bytes | Any] | None = None
    for match in _BLOCK.finditer(text):
        lang, tag, content = match.group(1), match.group(2), match.group(3)
        if (lang, tag) not in TAGS:
            continue
        line = text.count("\n", 0, match.start()) + 1
        if tag == "message":
            assert pending is None, f"docs/contract.md:{pending[0]}: a message without its result"
            body = content[:-1].encode() if lang == "text" else orjson.loads(content)
            pending = (line, body)
        elif tag == "result":
            assert pending is not None, f"docs/contract.md:{line}: a result without its message"
            expected = orjson.loads(content)
            assert set(expected) == RESULT_KEYS, f"docs/contract.md:{line}: a result has exactly {sorted(RESULT_KEYS)}"
            contract.examples.append(Example(pending[0], pending[1], expected))
            pending = None
        else:
            contract.stored.append(Stored(line, orjson.loads(content)))
    assert pending is None, f"docs/contract.md:{pending[0]}: a message without its result"
    return contract


# --- placeholders ---------------------------------------------------------------------


def ids_named(value: Any) -> set[str]:
    return set(_ID.findall(orjson.dumps(value).decode())) if not isinstance(value, bytes) else set()


def substitute(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _ID.sub(lambda m: ids[m.group(1)], value)
    if isinstance(value, list):
        return [substitute(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, ids) for k, v in value.items()}
    return value


class Ids:
    """Binds `<id:NAME>` placeholders to real profile ids, one id per name."""

    def __init__(self) -> None:
        self.by_name: dict[str, str] = {}

    def check(self, expected: str, actual: Any) -> str | None:
        """None if `actual` fits the placeholder `expected`, else why not."""
        name = _ID.fullmatch(expected)
        assert name is not None
        if not isinstance(actual, str) or not _HEX24.fullmatch(actual):
            return f"expected a profile id ({expected}), got {actual!r}"
        bound = self.by_name.get(name.group(1))
        if bound is None:
            owner = next((n for n, i in self.by_name.items() if i == actual), None)
            if owner is not None:
                return f"expected a new profile ({expected}), got the one of <id:{owner}>"
            self.by_name[name.group(1)] = actual
            return None
        if bound != actual:
            return f"expected the profile {expected} ({bound}), got {actual}"
        return None


def text_matches(expected: str, actual: Any) -> bool:
    if not isinstance(actual, str):
        return False
    pattern = ".*".join(re.escape(part) for part in expected.split(WILDCARD))
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def differences(expected: Any, actual: Any, ids: Ids, path: str = "") -> list[str]:
    """How `actual` differs from `expected` (placeholders and wildcards understood)."""
    if isinstance(expected, str) and _ID.fullmatch(expected):
        problem = ids.check(expected, actual)
        return [f"{path}: {problem}"] if problem else []
    if isinstance(expected, str) and WILDCARD in expected:
        return [] if text_matches(expected, actual) else [f"{path}: expected {expected!r}, got {actual!r}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return [f"{path}: keys {sorted(expected)} expected, got {sorted(actual)}"]
        return [d for k in expected for d in differences(expected[k], actual[k], ids, f"{path}.{k}".lstrip("."))]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, ids, f"{path}[{i}]")]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []


# --- running --------------------------------------------------------------------------


def run_examples(harness: Harness, examples: list[Example], ids: Ids) -> list[str]:
    """Publish every example in order, drain, and compare; the differences found."""
    problems: list[str] = []
    pending: list[Example] = []

    def drain() -> None:
        if not pending:
            return
        harness.run()
        results = harness.results()
        if len(results) != len(pending):
            problems.append(f"{len(pending)} messages published, {len(results)} results: {results}")
        for example, actual in zip(pending, results):
            found = differences(example.expected, actual, ids)
            if found:
                problems.append(f"{example.where()}: {'; '.join(found)}\n    actual result: {actual}")
        pending.clear()

    for example in examples:
        if ids_named(example.body) - set(ids.by_name):
            drain()
        unknown = ids_named(example.body) - set(ids.by_name)
        if unknown:
            problems.append(f"{example.where()}: the message names {sorted(unknown)}, which no earlier result bound")
            continue
        body = example.body if isinstance(example.body, bytes) else orjson.dumps(substitute(example.body, ids.by_name))
        harness.publish(body)
        pending.append(example)
    drain()
    return problems


def stored_profile(harness: Harness, profile_id: str, wanted: set[str]) -> dict[str, Any]:
    """The profile as the database holds it, in the shape of a `json stored` block."""
    rows = harness.rows("SELECT db_id, email, phones, fields FROM profiles WHERE profile_id = %s", profile_id)
    if not rows:
        return {}
    db_id, email, phones, fields = rows[0]
    actual: dict[str, Any] = {
        "profile_id": profile_id, "db_id": db_id, "email": email, "phones": phones, "fields": fields,
    }
    if "subscriptions" in wanted:
        actual["subscriptions"] = [
            dict(zip(SUBSCRIPTION_COLUMNS, row))
            for row in harness.rows(
                f"SELECT {', '.join(SUBSCRIPTION_COLUMNS)} FROM subscriptions "
                "WHERE db_id = %s AND profile_id = %s ORDER BY 1, 2, 3, 4", db_id, profile_id)
        ]
    if "events" in wanted:
        actual["events"] = [kind for (kind,) in harness.rows(
            "SELECT kind FROM events WHERE db_id = %s AND profile_id = %s ORDER BY event_id", db_id, profile_id)]
    return actual


def check_stored(harness: Harness, stored: list[Stored], ids: Ids) -> list[str]:
    """Each `json stored` block against the database: its keys only, subscriptions by their given keys."""
    problems = []
    for block in stored:
        name = _ID.fullmatch(str(block.expected.get("profile_id", "")))
        if name is None or name.group(1) not in ids.by_name:
            problems.append(f"docs/contract.md:{block.line}: a stored block names a profile no result bound")
            continue
        expected = dict(block.expected)
        actual = stored_profile(harness, ids.by_name[name.group(1)], set(expected))
        if not actual:
            problems.append(f"docs/contract.md:{block.line}: profile {expected['profile_id']} is not stored")
            continue
        if "subscriptions" in expected and len(expected["subscriptions"]) == len(actual["subscriptions"]):
            # A subscription shows the keys the document cares about.
            actual["subscriptions"] = [
                {k: a.get(k) for k in e} for e, a in zip(expected["subscriptions"], actual["subscriptions"])
            ]
        shown = {k: actual.get(k) for k in expected}
        found = differences(expected, shown, ids)
        if found:
            problems.append(f"docs/contract.md:{block.line}: {'; '.join(found)}\n    stored: {shown}")
    return problems


# --- the tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract() -> Contract:
    return parse_contract(CONTRACT.read_text(encoding="utf-8"))


def test_given_the_contract_examples_when_run_in_order_then_each_gets_its_documented_result(
    harness: Harness, contract: Contract,
) -> None:
    """Given a fresh database seeded as the document says, when its examples are
    published in order and drained by the worker, then every result and every stored
    profile is the one the document shows."""
    harness.settings = harness.settings.replace(max_message_bytes=contract.max_message_bytes)
    ids = Ids()
    problems = run_examples(harness, contract.examples, ids)
    problems += check_stored(harness, contract.stored, ids)
    assert not problems, "docs/contract.md disagrees with the worker:\n" + "\n".join(problems)


def test_the_contract_examples_cover_every_built_in_mode_and_every_error_code(contract: Contract) -> None:
    registrations = Registry(get_plugin_manager()).registrations()
    built_in = {r.matcher.name for r in registrations if r.plugin.startswith("dbimport.matchers.")}
    assert built_in == set(BUILT_IN_MODES)
    modes = {
        example.body.get("matching", "email")
        for example in contract.examples
        if isinstance(example.body, dict) and example.expected["error"] == 0
    }
    assert built_in - modes == set(), "modes without a successful example"
    codes = {example.expected["error"] for example in contract.examples}
    assert REQUIRED_CODES - codes == set(), "error codes without an example"
    flags = {key for example in contract.examples if isinstance(example.body, dict)
             for key in ("update_only", "skip_triggers", "skip_invalid_subscriptions") if example.body.get(key) is True}
    assert flags == {"update_only", "skip_triggers", "skip_invalid_subscriptions"}


def test_the_examples_seed_is_part_of_the_test_seed() -> None:
    """The document's examples assume examples/seed.json; the tests' database is seeded
    with tests/data/seed.json, which must hold all of it unchanged."""
    def flatten(seed: dict[str, Any]) -> set[str]:
        items = set()
        for account in seed["accounts"]:
            for db in account.get("databases", []):
                items.add(f"account {account['id']} database {db['id']}")
                items.update(f"database {db['id']} field {orjson.dumps(f).decode()}" for f in db.get("fields", []))
            for res in account.get("resources", []):
                items.add(f"account {account['id']} resource {res['id']}")
                items.update(f"resource {res['id']} linked to database {d}" for d in res.get("databases", []))
                items.update(f"resource {res['id']} field {orjson.dumps(f).decode()}" for f in res.get("fields", []))
        return items

    examples = flatten(orjson.loads(EXAMPLES_SEED.read_bytes()))
    tests = flatten(orjson.loads(TESTS_SEED.read_bytes()))
    assert examples - tests == set()


def test_a_wrong_example_is_reported(harness: Harness) -> None:
    """The checker itself: a document whose example expects the wrong result fails."""
    text = (
        "The examples run with `IMPORT_MAX_MESSAGE_BYTES` set to 1024.\n\n"
        "```json message\n"
        '{"account_id": 1, "db_id": 1, "email": "wrong@example.com", "data": {}}\n'
        "```\n\n```json result\n"
        '{"error": 0, "error_text": "", "feedback_id": "", "matching_field": "phone", "profile_id": "<id:w>"}\n'
        "```\n\n```json message\n"
        '{"account_id": 1, "db_id": 1, "email": "other@example.com", "data": {}}\n'
        "```\n\n```json result\n"
        '{"error": 0, "error_text": "", "feedback_id": "", "matching_field": "email", "profile_id": "<id:w>"}\n'
        "```\n"
    )
    contract = parse_contract(text)
    problems = run_examples(harness, contract.examples, Ids())
    assert len(problems) == 2
    assert "matching_field: expected 'phone', got 'email'" in problems[0]
    assert "expected the profile <id:w>" in problems[1]
