"""Who may import what outside the package: docs and the example plugin use only the public API
(`cas_spec` and `cas_spec.plugin`, plus the testing kit), test modules share through
`tests/helpers.py` only, and every import in the benchmark scripts resolves."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = re.compile(r"^\s*(from|import)\s+cas_spec\.core\b", re.M)


def imported(source: str) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every absolute import in `source`, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, [], node.lineno) for alias in node.names)
    return out


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_docs_and_the_example_plugin_never_import_the_core():
    offenders = []
    for page in sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]:
        for block in python_blocks(page.read_text()):
            offenders += [
                f"{page.relative_to(ROOT)}: {line.strip()}" for line in block.splitlines() if CORE.match(line)
            ]
    for path in sorted((ROOT / "examples").rglob("*.py")):
        offenders += [
            f"{path.relative_to(ROOT)}:{line}"
            for module, _, line in imported(path.read_text())
            if module.startswith("cas_spec.core")
        ]
    assert not offenders, "use cas_spec.plugin (the public plugin API) instead:\n" + "\n".join(offenders)


def test_the_core_check_can_fail():
    assert CORE.search("x = 1\nfrom cas_spec.core.state import DecodingState\n")
    assert not CORE.search("from cas_spec.plugin import DecodingState\n")


def test_test_modules_share_only_through_the_helpers():
    allowed = {"tests.helpers", "tests.testing.broken_plugins"}  # the latter: a fixture plugin package
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for module, _, line in imported(path.read_text())
        if (module == "tests" or module.startswith("tests.")) and module not in allowed
    ]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_every_import_of_a_benchmark_script_resolves(script):
    """The benchmarks are run by hand, not by the suite; this keeps them in step with the package."""
    for module, names, line in imported(script.read_text()):
        if not module.startswith("cas_spec"):
            continue
        loaded = importlib.import_module(module)
        missing = [name for name in names if not hasattr(loaded, name) and not _is_module(f"{module}.{name}")]
        assert not missing, f"{script.name}:{line}: {module} has no {missing}"


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
