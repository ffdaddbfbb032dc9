"""The package's import structure: no circles, the lazy imports inside functions included, and the
ground-floor modules importing nothing above them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sft_sweeps"
# Modules every other one may build on: they import no module of the project but these.
GROUND = {
    "sft_sweeps.config": {"sft_sweeps.naming"},
    "sft_sweeps.naming": set(),
    "sft_sweeps.metrics": set(),
    "sft_sweeps.files": {"sft_sweeps.config", "sft_sweeps.naming"},  # check_writable_dir raises ConfigError
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports anywhere (inside functions too), `TYPE_CHECKING` blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sft_sweeps"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("sft_sweeps"))
    return {m for m in out if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # A package's __init__ gathering its own submodules is its public surface, not an arrow back up.
    return {
        name: {d for d in _imports(path, modules) if not d.startswith(name + ".") and d != name}
        for name, path in modules.items()
    }


def test_no_import_circles() -> None:
    graph = _graph()
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_ground_floor_imports_nothing_above_it() -> None:
    graph = _graph()
    for module, allowed in GROUND.items():
        assert graph[module] <= allowed, f"{module} imports {sorted(graph[module] - allowed)}"
