"""The generated pages: which they are, which are stale, and writing them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cas_spec.docsgen import hooks_page, plugin_api_page, yaml_page


def pages() -> dict[str, Callable[[], str]]:
    """Page path relative to docs/ → function rendering its Markdown."""
    return {
        "reference/yaml.md": yaml_page.render,
        "reference/hooks.md": hooks_page.render,
        "reference/plugin-api.md": plugin_api_page.render,
    }


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
