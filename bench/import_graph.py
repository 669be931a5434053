"""Which parts of greenroom import each other: pairs of top-level units with imports both ways.

A unit is what follows `greenroom.` in a module's name: a package (`serving`, `registry`, ...) or
a top-level module (`config`, `app`, ...). Every import statement of a module counts, at module
level or inside a function, except those under `if TYPE_CHECKING:` (they couple nothing at run
time, and the import-linter contracts in pyproject.toml leave them out too). Relative imports are
resolved. Prints each pair with the imports that make each direction, then the number of pairs.

A pair is *allowed* when every import behind it is one the import-linter contracts allow across
units: anything importing a shared module (`SHARED`); a domain's `flows` module, or an engine
package, calling a domain below its `models`; a view asking auth who calls; Alembic's env
registering every table; the registry's load check loading an engine. The goal is 0 pairs that
are not (a shared module that imports an engine package, two engine packages that import each
other, a domain's schemas that import another domain: those are not). Last, the pairs of modules
that import each other directly.

    python bench/import_graph.py [--src src]
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

ROOT_PACKAGE = "greenroom"
DOMAINS = {"registry", "deployments", "workloads", "tasks", "auth", "audit"}
ENGINES = {"rollout", "worker", "serving", "runtime"}
SHARED = {"config", "errors", "signals", "metrics", "schemas", "pagination", "store", "deps"}
ALLOWED_EXCEPTIONS = {
    ("greenroom.store.migrations.env", "models"),  # Alembic's env registers every table
    ("greenroom.registry.check", "greenroom.runtime.engines"),  # the load check child process
}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node outside `if TYPE_CHECKING:` blocks (their `else` branches are kept)."""
    nodes: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def is_module(src: Path, name: str) -> bool:
    base = src.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(path: Path, module: str, src: Path) -> list[tuple[str, int]]:
    """The greenroom modules `path` imports, with the line of each import (`from package import
    module` names the module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.append((name if is_module(src, name) else base, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == ROOT_PACKAGE]


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


Edge = tuple[str, int, str]  # importing module, line, imported module


def module_edges(src: Path) -> list[Edge]:
    edges: list[Edge] = []
    for path in sorted((src / ROOT_PACKAGE).rglob("*.py")):
        module = module_name(path, src)
        imports = dict.fromkeys(imported_modules(path, module, src))  # once per import line
        edges.extend((module, line, imported) for imported, line in imports)
    return edges


def unit_edges(edges: list[Edge]) -> dict[tuple[str, str], list[Edge]]:
    """(importing unit, imported unit) -> the imports behind it."""
    by_units: dict[tuple[str, str], list[Edge]] = defaultdict(list)
    for module, line, imported in edges:
        source, target = unit_of(module), unit_of(imported)
        if source and target and source != target:
            by_units[(source, target)].append((module, line, imported))
    return by_units


def is_allowed(edge: Edge) -> bool:
    """Whether the contracts allow this import across units (module docstring)."""
    module, _, imported = edge
    source, target = module.split("."), imported.split(".")
    if (module, imported) in ALLOWED_EXCEPTIONS or (module, target[-1]) in ALLOWED_EXCEPTIONS:
        return True
    if target[1] in SHARED:
        return source[1] not in SHARED or target[1] in SHARED
    below_models = target[1] in DOMAINS and "models" not in target[2:]
    from_flows = source[1] in DOMAINS and source[2:] == ["flows"]
    view_asks_auth = source[2:] == ["views"] and target[1] == "auth"
    return below_models and (from_flows or view_asks_auth or source[1] in ENGINES)


def module_cycles(edges: list[Edge]) -> list[tuple[str, str]]:
    direct = {(module, imported) for module, _, imported in edges}
    return sorted((a, b) for (a, b) in direct if a < b and (b, a) in direct)


def mutual_pairs(by_units: dict[tuple[str, str], list[Edge]]) -> list[tuple[str, str]]:
    return sorted((a, b) for (a, b) in by_units if a < b and (b, a) in by_units)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent / "src")
    args = parser.parse_args()
    edges = module_edges(args.src)
    by_units = unit_edges(edges)
    pairs = mutual_pairs(by_units)
    not_allowed = 0
    for a, b in pairs:
        behind = by_units[(a, b)] + by_units[(b, a)]
        allowed = all(is_allowed(edge) for edge in behind)
        not_allowed += not allowed
        print(f"{a} <-> {b}{'  (allowed)' if allowed else ''}")
        for module, line, imported in behind:
            mark = "" if allowed or is_allowed((module, line, imported)) else "  <- not allowed"
            print(f"    {module}:{line} -> {imported}{mark}")
    print(f"{len(pairs)} pairs of units import each other, {not_allowed} of them not allowed")
    cycles = module_cycles(edges)
    for a, b in cycles:
        print(f"module cycle: {a} <-> {b}")
    print(f"{len(cycles)} pairs of modules import each other")


if __name__ == "__main__":
    main()
