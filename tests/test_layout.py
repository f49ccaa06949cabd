"""The package's shape: no import cycle among its modules and no import of another module's private name (a name
with a leading underscore), checked on the source's syntax trees."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("distill", "exporters")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path], module_level: bool) -> list[tuple[str, str]]:
    """``(module, imported name)`` of each ``from ... import`` in ``path`` (only top-level statements if
    ``module_level``), relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found += [(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names]
    return found


def test_no_import_cycle_among_modules():
    known = modules()
    graph = {name: {m for m, _ in imports(name, path, known, True) if m in known and m != name}
             for name, path in known.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dependency in sorted(graph[node]):
            if state.get(dependency) == 1:
                cycles.append(stack[stack.index(dependency):] + [dependency])
            elif dependency not in state:
                visit(dependency, stack + [dependency])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, " ; ".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_imports_a_private_name_of_another():
    known = modules()
    private = [f"{name}: {module}.{imported}" for name, path in known.items()
               for module, imported in imports(name, path, known, False)
               if imported.startswith("_") and not imported.startswith("__") and module.split(".")[0] in PACKAGES]
    assert not private, private
