"""Meta-tests: every hook is documented and tested, and the guide's examples still run.

The guide is docs/writing-a-matcher.md. Its fenced blocks follow one convention:

- a block tagged exactly `python` is an example that runs: the blocks are executed
  in order, in one module namespace, with examples/dbimport-loyalty importable; the
  test functions they define are called, and the matchers they define must register;
- a block right after `<!-- file: PATH -->` quotes PATH (relative to the repository):
  its text must appear in that file as it is, so the quote cannot drift from the
  package that tests/test_third_party_plugin.py runs end to end;
- any other block (`python no-run`, `ini`, `sh`, `text`...) is shown, not run.
"""
from __future__ import annotations

import inspect
import re
import shutil
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import msg
from dbimport import hookspecs
from dbimport.hookspecs import hookimpl
from dbimport.lookup import Lookup
from dbimport.matcher import Matcher
from dbimport.plugins import Registry, get_plugin_manager
from dbimport.worker import RunLimits, Worker

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "writing-a-matcher.md"
TESTS = Path(__file__).resolve().parent
LOYALTY_SRC = REPO / "examples" / "dbimport-loyalty"
_BLOCK = re.compile(
    r"(?:<!-- file: (?P<file>\S+) -->\n)?^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL
)


@dataclass(frozen=True)
class Block:
    info: str
    body: str
    file: str | None
    line: int


def guide_blocks() -> list[Block]:
    text = GUIDE.read_text(encoding="utf-8")
    return [
        Block(m["info"].strip(), m["body"], m["file"], text.count("\n", 0, m.start()) + 1)
        for m in _BLOCK.finditer(text)
    ]


def hook_names() -> list[str]:
    """The hooks dbimport defines: the functions in hookspecs carrying the spec marker."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return sorted(
        name for name, obj in vars(hookspecs).items()
        if name.startswith("dbimport_") and callable(obj) and hasattr(obj, marker)
    )


def test_hooks_are_discovered():
    assert "dbimport_register_matchers" in hook_names()


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_docstring(hook):
    assert inspect.getdoc(getattr(hookspecs, hook)), f"{hook} in dbimport/hookspecs.py has no docstring"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_described_in_the_guide(hook):
    assert hook in GUIDE.read_text(encoding="utf-8"), f"{hook} is not described in {GUIDE.relative_to(REPO)}"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_exercised_by_a_test(hook):
    using = [
        path.name for path in sorted(TESTS.glob("test_*.py"))
        if path.name != Path(__file__).name and hook in path.read_text(encoding="utf-8")
    ]
    assert using, f"no test under tests/ exercises {hook}"


def test_the_guide_describes_the_whole_matcher_api():
    """Each public attribute of Matcher and Lookup appears in the guide."""
    guide = GUIDE.read_text(encoding="utf-8")
    public = {n for n in vars(Matcher) if not n.startswith("_")} | {"name", "schema"}
    public |= {n for n in vars(Lookup) if not n.startswith("_")} | {"connection", "db_id"}
    spans = re.findall(r"`([^`\n]+)`", guide)
    missing = sorted(n for n in public if not any(re.search(rf"\b{n}\b", span) for span in spans))
    assert not missing, f"the guide does not describe: {missing}"


def test_the_guide_names_the_entry_point_group():
    from dbimport.plugins import ENTRY_POINT_GROUP

    assert f"[project.entry-points.{ENTRY_POINT_GROUP}]" in GUIDE.read_text(encoding="utf-8")
    assert any(b.info == "ini" and f"\n{ENTRY_POINT_GROUP} =\n" in b.body for b in guide_blocks())


# --- the guide's examples ----------------------------------------------------------


@pytest.mark.parametrize(
    "block", [b for b in guide_blocks() if b.file], ids=lambda b: f"line{b.line}"
)
def test_quoted_files_are_quoted_as_they_are(block):
    quoted = REPO / block.file
    assert quoted.is_file(), f"{GUIDE.name}:{block.line} quotes {block.file}, which does not exist"
    assert block.body in quoted.read_text(encoding="utf-8"), (
        f"{GUIDE.name}:{block.line} no longer matches {block.file}: copy the file's text into the guide"
    )


@pytest.fixture
def loyalty_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example package importable from a copy (no bytecode in the repository),
    and forgotten afterwards, so that no other test sees it installed."""
    src = shutil.copytree(LOYALTY_SRC, tmp_path / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    monkeypatch.syspath_prepend(str(src))
    yield
    for name in [n for n in sys.modules if n == "dbimport_loyalty" or n.startswith("dbimport_loyalty.")]:
        del sys.modules[name]


def run_guide_examples() -> types.ModuleType:
    """The guide's runnable blocks executed, in order, as one module."""
    module = types.ModuleType("writing_a_matcher_guide")
    runnable = [b for b in guide_blocks() if b.info == "python" and not b.file]
    assert runnable, "the guide has no runnable example"
    for block in runnable:
        code = compile(block.body, f"{GUIDE.name}:{block.line + 1}", "exec")
        exec(code, module.__dict__)
    return module


class GuidePlugin:
    """Registers the matchers the guide's examples define."""

    __name__ = "docs/writing-a-matcher.md"

    def __init__(self, matchers: list[Matcher]) -> None:
        self.matchers = matchers

    @hookimpl
    def dbimport_register_matchers(self) -> list[Matcher]:
        return self.matchers


def guide_matchers(module: types.ModuleType) -> list[Matcher]:
    """The matchers the guide's examples define: classes of their own, and instances."""
    defined = [
        obj() for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Matcher) and obj.__module__ == module.__name__
    ]
    return defined + [obj for obj in vars(module).values() if isinstance(obj, Matcher)]


def test_the_guides_examples_run_and_their_matchers_register(loyalty_importable):
    module = run_guide_examples()

    tests = {n: f for n, f in vars(module).items() if n.startswith("test_") and callable(f)}
    assert tests, "the guide's examples define no test"
    for name, test in tests.items():
        assert not inspect.signature(test).parameters, f"the guide's {name} takes fixtures: it cannot run here"
        test()
    matchers = guide_matchers(module)
    assert matchers, "the guide's examples define no matcher"
    for matcher in matchers:
        registry = Registry(get_plugin_manager(entry_points=False, extra_plugins=[GuidePlugin([matcher])]))
        assert registry[matcher.name] is matcher


def test_the_guides_batched_matcher_imports_like_the_single_message_one(loyalty_importable, harness):
    """Given the guide's `find_many` example as the loyalty mode, when one batch
    creates a card and updates it twice, then one profile holds the card."""
    [matcher] = [m for m in guide_matchers(run_guide_examples()) if m.name == "loyalty"]
    harness.rows("INSERT INTO database_fields (db_id, name, type) VALUES (1, 'loyalty_card', 'string') RETURNING 1")
    harness.publish(*(
        msg(matching="loyalty", card_number=card, data={"_fname": f"v{i}"}, feedback_id=str(i))
        for i, card in enumerate(["LC-0012 3456", "lc0012 3456", "LC00-12-34-56"])
    ))

    pm = get_plugin_manager(entry_points=False, extra_plugins=[GuidePlugin([matcher])])
    Worker(harness.settings, plugin_manager=pm).run(RunLimits(until_empty=True))

    results = harness.results()
    assert [r["error"] for r in results] == [0, 0, 0], results
    assert len({r["profile_id"] for r in results}) == 1
    assert harness.rows("SELECT fields FROM profiles") == [({"loyalty_card": "LC00123456", "_fname": "v2"},)]
