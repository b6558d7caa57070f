"""The code in the docs runs: every ```python block of docs/*.md and docs/**/*.md, and every
```bash block marked to run.

Markers are HTML comments (invisible on the site) on a line of their own before a fence (blank
lines between are fine):

- `<!-- docs-test: skip (why) -->` before a ```python block: not executed (a real model, a network);
- `<!-- docs-test: run -->` before a ```bash block: executed (bash blocks are not run otherwise).

A page's python blocks run in order in one namespace, like a session, in an empty folder in which
`tests/` is the repository's tests folder (so `tests/fixtures/stories260K` loads); marked bash
blocks run there too, with this interpreter's `cas-spec` first on PATH. docs/writing-docs.md
documents the same rules for authors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
MARKER = re.compile(r"^[ \t]*<!--\s*docs-test:\s*(?P<action>[\w-]+)(?P<why>[^>]*?)\s*-->[ \t]*$", re.M)
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[\w+-]*)[^\n]*\n"
    r"(?P<code>.*?)^(?P=indent)(?P=ticks)[ \t]*$",
    re.M | re.S,
)
ACTIONS = {"skip": "python", "run": "bash"}  # marker -> the language of the block it applies to


@dataclass(frozen=True)
class Block:
    page: str  # relative to docs/
    line: int  # line of the first line of code in the page
    lang: str
    code: str
    marker: str | None  # the action of the marker right before the fence, if any

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def blocks(path: Path, root: Path | None = None) -> list[Block]:
    root = root or DOCS
    text = path.read_text(encoding="utf-8")
    out = []
    for fence in FENCE.finditer(text):
        before = text[: fence.start()].rstrip().rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before)
        line = text.count("\n", 0, fence.start()) + 2
        code = textwrap.dedent("\n".join(row[len(fence["indent"]) :] for row in fence["code"].split("\n")))
        out.append(Block(str(path.relative_to(root)), line, fence["lang"], code, marker["action"] if marker else None))
    return out


def markers(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, action, language of the next fence or None) of every marker of a page."""
    text = path.read_text(encoding="utf-8")
    out = []
    for found in MARKER.finditer(text):
        rest = text[found.end() :].lstrip("\n \t")
        fence = FENCE.match(rest)
        out.append((text.count("\n", 0, found.start()) + 1, found["action"], fence["lang"] if fence else None))
    return out


def python_pages() -> list[str]:
    return [
        str(p.relative_to(DOCS)) for p in pages() if any(b.lang == "python" and b.marker != "skip" for b in blocks(p))
    ]


def bash_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks(p) if b.lang in ("bash", "sh") and b.marker == "run"]


@pytest.fixture
def docs_cwd(tmp_path, monkeypatch):
    """An empty working folder in which `tests/` is the repository's tests folder."""
    (tmp_path / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_marker_stands_right_before_a_block_of_its_language():
    problems = []
    for path in pages():
        for line, action, lang in markers(path):
            if action not in ACTIONS:
                problems.append(
                    f"docs/{path.relative_to(DOCS)}:{line}: unknown marker '{action}' (known: {', '.join(ACTIONS)})"
                )
            elif lang != ACTIONS[action] and not (action == "run" and lang == "sh"):
                problems.append(
                    f"docs/{path.relative_to(DOCS)}:{line}: '{action}' must stand right before a "
                    f"```{ACTIONS[action]} block, found {f'```{lang}' if lang is not None else 'no block'}"
                )
    assert not problems, "\n".join(problems)


def test_the_block_parser_sees_markers_lines_and_indented_fences(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- docs-test: skip (a model) -->\n\n```python\nx = 1\n```\n\n"
        "- item\n\n    ```bash\n    echo hi\n    ```\n\n<!-- docs-test: run -->\n````text\n```\n````\n"
    )
    found = [(b.lang, b.code, b.line, b.marker) for b in blocks(page, root=tmp_path)]
    assert found == [("python", "x = 1\n", 6, "skip"), ("bash", "echo hi\n", 12, None), ("text", "```\n", 17, "run")]
    assert markers(page) == [(3, "skip", "python"), (15, "run", "text")]


@pytest.mark.parametrize("page", python_pages())
def test_python_examples_run(page, docs_cwd):
    namespace: dict = {"__name__": "docs_" + re.sub(r"\W", "_", page)}
    for block in blocks(DOCS / page):
        if block.lang != "python" or block.marker == "skip":
            continue
        # Pad so that a traceback points at the line of the page.
        code = compile("\n" * (block.line - 1) + block.code, f"docs/{page}", "exec")
        try:
            exec(code, namespace)
        except Exception as exc:
            raise AssertionError(f"the example at {block.where} failed: {type(exc).__name__}: {exc}") from exc


@pytest.mark.parametrize("block", bash_blocks(), ids=lambda b: b.where)
def test_marked_bash_examples_run(block, docs_cwd):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=docs_cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"{block.where} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
