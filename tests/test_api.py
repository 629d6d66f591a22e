"""The public plugin API (docs/writing-a-matcher.md, "The API: dbimport.api"): what plugins
may import, that it is all documented, and that the package's import graph has no cycles."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from dbimport import api

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "writing-a-matcher.md"
PLUGIN_SOURCES = sorted([*(ROOT / "matchers").rglob("*.py"), *(ROOT / "examples").rglob("*.py")])


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
