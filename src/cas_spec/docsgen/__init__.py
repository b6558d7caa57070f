"""Generated documentation pages, so that reference pages cannot drift from the code.

    python -m cas_spec.docsgen            # rewrite docs/reference/yaml.md and docs/reference/hooks.md
    python -m cas_spec.docsgen --check    # exit 1 and name the stale pages
    python -m cas_spec.docsgen --diagram  # also redraw docs/images/step.png (needs matplotlib)

The tests (`tests/test_docs_reference.py`) fail when a committed page differs from what the
generators produce now.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

REGENERATE = "python -m cas_spec.docsgen"
DIAGRAM = "images/step.png"


def pages() -> dict[str, Callable[[], str]]:
    """Page path relative to docs/ → function rendering its Markdown."""
    from cas_spec.docsgen import hooks_page, yaml_page

    return {"reference/yaml.md": yaml_page.render, "reference/hooks.md": hooks_page.render}


def stale_pages(docs: Path) -> list[str]:
    """Pages under `docs` that differ from their generator's output (missing ones included)."""
    stale = []
    for name, render in pages().items():
        path = docs / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render():
            stale.append(name)
    return stale


def write_pages(docs: Path) -> list[Path]:
    written = []
    for name, render in pages().items():
        path = docs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(), encoding="utf-8")
        written.append(path)
    return written
