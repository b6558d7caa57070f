"""The package's dependency direction (DESIGN §3), checked on every import, function-level ones too.

Layers, bottom up: the leaves (`paths` and `compat`, then `kernels`) ← `core` ← `data` and the plugin API
(`plugin`) ← the plugins (`adapters`, `strategies`, `schedulers`, `verifiers`) ← `costs` ← the
composition root (`pipeline`, `hub`) ← the user-facing front ends (`cli`, `bench`, `testing`,
`docsgen`, the package's `__init__`). A module may import its own package and anything below its
layer, nothing beside it (the plugins do not import each other; the front ends may) or above it.
And the whole import graph, function-level imports included (those for type checking only
excepted, as they never run), has no cycle: no import inside a function dodges one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cas_spec"
LAYERS = {
    "paths": 0,
    "compat": 0,
    "kernels": 1,
    "core": 2,
    "data": 3,
    "plugin": 3,
    "hub": 3,
    "adapters": 4,
    "strategies": 4,
    "schedulers": 4,
    "verifiers": 4,
    "costs": 5,
    "pipeline": 6,
    "cli": 7,
    "bench": 7,
    "testing": 7,
    "docsgen": 7,
    "transformers_hook": 7,
    "__init__": 7,
    "__main__": 7,
}
FRONT_ENDS = 7  # the front ends may use each other (the CLI runs the bench); below, a layer's packages may not
# Modules that import cas_spec modules inside functions, and why: loading time or optional
# dependencies, never a cycle (the graph has none, function-level imports included).
LAZY = {
    "__init__": "old plugin names served from cas_spec.plugin with a deprecation warning",
    "strategies.dsia.quantization": "each int8 backend's dependencies only when it is used",
}


def modules() -> dict[str, Path]:
    """Dotted module name (under cas_spec) -> file."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (never executed: no cycle through them)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for child in node.body for n in ast.walk(child)}
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool, bool]]:
    """(imported cas_spec module, line, at function level, for type checking only) per import."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    nested = {
        id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(f)
    }
    typing_only = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["cas_spec", *package[: len(package) - node.level + 1], *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if not target.startswith("cas_spec"):
                continue
            dotted = target.removeprefix("cas_spec").lstrip(".") or "__init__"
            while dotted and dotted not in known:  # `from package import name` names a module or an object
                dotted = dotted.rpartition(".")[0]
            found.append((dotted or "__init__", node.lineno, id(node) in nested, id(node) in typing_only))
    return sorted(set(found))


def top(module: str) -> str:
    return module.split(".")[0]


def test_every_module_belongs_to_a_layer():
    unknown = sorted({top(m) for m in modules()} - set(LAYERS) - {"pipelines"})
    assert not unknown, f"packages without a layer: {unknown}; add them to LAYERS (and to DESIGN §3)"


def test_no_import_goes_against_the_dependency_direction():
    known = modules()
    wrong = []
    for name, path in known.items():
        for target, line, nested, _ in imports(name, path, known):
            if top(target) == top(name):
                continue
            if LAYERS[top(target)] > LAYERS[top(name)] or (LAYERS[top(target)] == LAYERS[top(name)] < FRONT_ENDS):
                where = "in a function" if nested else "at module level"
                wrong.append(f"{path.relative_to(SRC.parent)}:{line} ({where}): {name} imports {target}")
    assert not wrong, "imports against the direction:\n" + "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    known = modules()
    graph = {
        name: {t for t, _, _, typing in imports(name, path, known) if t != name and not typing}
        for name, path in known.items()
    }
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(cycles)


def test_function_level_imports_are_only_where_loading_time_asks_for_them():
    known = modules()
    found = sorted(
        {
            name
            for name, path in known.items()
            for _, _, nested, typing in imports(name, path, known)
            if nested and not typing
        }
    )
    unexpected = [name for name in found if name not in LAZY]
    assert not unexpected, (
        f"cas_spec imports inside functions in {unexpected}: import at module level, or add the "
        "module to LAZY with the reason"
    )
    assert sorted(LAZY) == found, f"LAZY lists modules without function-level imports: {sorted(set(LAZY) - set(found))}"


@pytest.mark.parametrize("package", ["kernels", "paths", "compat"])
def test_the_leaves_import_no_other_package(package):
    known = modules()
    allowed = {"paths", "compat"} if package == "kernels" else set()
    wrong = [
        f"{name} imports {t}"
        for name, path in known.items()
        if top(name) == package
        for t, _, _, _ in imports(name, path, known)
        if top(t) not in {package, *allowed}
    ]
    assert not wrong, wrong
