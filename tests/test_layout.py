"""The package's shape (DESIGN.md): imports point one way, no cycles, small files.

Imports are read from the source with `ast`, including the ones inside functions (a deferred
import is still a dependency), so the rules hold for every path through the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "eomt"

# Modules that may not import from the named areas, and why (DESIGN.md, "The shape of the package").
FORBIDDEN = {
    "eomt.models": ("eomt.checkpoints", "eomt.training", "eomt.inference", "eomt.evaluation", "eomt.data",
                    "eomt.commands", "eomt.cli", "eomt.demo", "eomt.export", "eomt.benchmark"),
    "eomt.evaluation": ("eomt.models", "eomt.checkpoints", "eomt.training", "eomt.commands", "eomt.cli"),
    "eomt.structures": ("eomt.models", "eomt.checkpoints", "eomt.training", "eomt.inference", "eomt.evaluation",
                        "eomt.data", "eomt.commands", "eomt.cli"),
    "eomt.config": ("eomt.models", "eomt.checkpoints", "eomt.training", "eomt.inference", "eomt.evaluation",
                    "eomt.data", "eomt.commands", "eomt.cli"),
}
MAX_LINES = 300
# Files allowed past MAX_LINES, each with the reason it stays whole.
LONG_FILES: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The eomt modules `name` imports (resolved to modules that exist: `from pkg import sub`
    names the submodule, `from mod import func` the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("eomt"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("eomt"):
                continue
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            found.update(subs or [mod])
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _in(module: str, area: str) -> bool:
    return module == area or module.startswith(area + ".")


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_imports_point_one_way(area: str) -> None:
    graph = _graph()
    wrong = sorted(
        f"{mod} imports {dep}"
        for mod, deps in graph.items() if _in(mod, area)
        for dep in deps if any(_in(dep, other) for other in FORBIDDEN[area])
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_files_stay_small() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    unexplained = {p: n for p, n in long.items() if p not in LONG_FILES}
    assert not unexplained, f"files over {MAX_LINES} lines: {unexplained}"


def test_the_rules_see_a_cycle_and_a_wrong_import(tmp_path: Path) -> None:
    """The checker itself: a planted cycle and a planted wrong-way import are found."""
    pkg = tmp_path / "eomt"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "net.py").write_text("def f():\n    from eomt.checkpoints import load\n")
    (pkg / "checkpoints.py").write_text("from eomt.models.net import f\n")
    known = {_module_name_in(tmp_path, p) for p in pkg.rglob("*.py")}
    net = _imports("eomt.models.net", pkg / "models" / "net.py", known)
    ckpt = _imports("eomt.checkpoints", pkg / "checkpoints.py", known)
    assert net == {"eomt.checkpoints"} and ckpt == {"eomt.models.net"}


def _module_name_in(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)
