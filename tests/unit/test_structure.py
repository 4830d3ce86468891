"""The package's shape, checked from its source: import graph, sizes, engine boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "zmqworkers"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 460  # about 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                head = base[: len(base) - node.level + 1]
                mod = ".".join([*head, node.module] if node.module else head)
            else:
                mod = node.module or ""
            # ``from pkg import sub`` names the submodule; ``from mod import x``
            # names the module. (A parent package's __init__ counts only where
            # it is named itself, as for ``import zmqworkers.x``.)
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for target in targets:
            # The module itself if it is one, else the nearest package holding it.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {name: _imports(name, path, known) for name, path in mods.items()}
    # A package importing its own submodules (re-exports) is no circle:
    # importing a submodule runs its package first by definition.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle_inside_the_package() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_circle_finder_finds_circles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_and_classes_stay_small(name: str) -> None:
    path = _modules()[name]
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{name} has {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{name}.{node.name} has {size} lines"


def _engine_commands() -> set[str]:
    tree = ast.parse((PACKAGE / "controller" / "engine.py").read_text())
    engine = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine")
    names = {
        n.name
        for n in engine.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and not n.name.startswith("_")
    }
    # Plain values set once in __init__ (its options, id, address, ...).
    init = next(n for n in engine.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    for node in ast.walk(init):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "self" and not node.attr.startswith("_"):
                names.add(node.attr)
    return names


def _engine_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Attributes read off anything named like an engine: ``engine.x``, ``self._engine.x``."""
    uses = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        owner_name = (
            owner.id
            if isinstance(owner, ast.Name)
            else owner.attr
            if isinstance(owner, ast.Attribute)
            else ""
        )
        if owner_name.lstrip("_") in ("engine", "last_engine"):
            uses.append((node.lineno, node.attr))
    return uses


def test_faces_use_only_the_engine_commands() -> None:
    commands = _engine_commands()
    assert {"submit", "drop_pending", "worker_snapshots", "counters"} <= commands
    bad = []
    for name, path in _modules().items():
        if name.startswith("zmqworkers.controller"):
            continue
        for line, attr in _engine_uses(ast.parse(path.read_text())):
            if attr.startswith("_") or attr not in commands:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: engine.{attr}")
    assert not bad, "outside controller/, only engine commands: " + ", ".join(bad)


def test_the_boundary_check_sees_a_reach_inside() -> None:
    tree = ast.parse("def f(self):\n    self._engine.sched.drop_pending()\n    engine._loop\n")
    assert sorted(attr for _, attr in _engine_uses(tree)) == ["_loop", "sched"]
