"""The plugin tutorial (docs/plugins/tutorial.md) stays true.

Convention: a line `<!-- file: PATH -->` (PATH relative to the plugin package), optionally followed
by one `<!-- docs-test: ... -->` marker line, stands right before a fenced block that holds the
file PATH in full. The tests check that each such block equals `examples/retrieval/PATH`, that the
blocks make the whole package, and (slow) that a package written from the page alone, then
installed, is listed by `cas-spec plugins` and decodes like plain greedy decoding.

The package is installed with `pip install --target` into a temporary folder put first on
PYTHONPATH, not with the tutorial's `pip install -e` into the project's environment, which it must
not change; `--no-build-isolation --no-index --no-deps` keeps the build offline.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import STORIES

ROOT = Path(__file__).parents[1]
TUTORIAL = ROOT / "docs" / "plugins" / "tutorial.md"
PACKAGE = ROOT / "examples" / "retrieval"
FILE_BLOCK = re.compile(
    r"^<!-- file: (?P<path>\S+) -->\n(?:<!-- docs-test:[^\n]*-->\n)?(?P<ticks>`{3,})[\w+-]*\n(?P<code>.*?)^(?P=ticks)$",
    re.M | re.S,
)
STORY_PROMPT = "Once upon a time, there was a little dog named Max."  # continued in the corpus


def tutorial_files() -> dict[str, str]:
    """PATH -> content of every file block of the tutorial."""
    text = TUTORIAL.read_text(encoding="utf-8")
    found = [(m["path"], m["code"]) for m in FILE_BLOCK.finditer(text)]
    assert len(found) == text.count("<!-- file: "), "a `<!-- file: PATH -->` line does not stand right before a block"
    paths = [path for path, _ in found]
    assert len(set(paths)) == len(paths), f"a file is shown twice: {sorted(p for p in paths if paths.count(p) > 1)}"
    return dict(found)


def package_sources() -> set[str]:
    """What the package is built and run from: its metadata, its code, its pipeline, its corpus."""
    paths = {"pyproject.toml", "README.md"}
    for pattern in ("src/**/*.py", "pipelines/*", "tests/data/corpus/*"):
        paths |= {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.glob(pattern) if p.is_file()}
    return paths


def write_package(folder: Path) -> Path:
    """The package as the tutorial's reader writes it: the page's file blocks, nothing else."""
    for path, content in tutorial_files().items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(content, encoding="utf-8")
    return folder


def test_every_file_the_tutorial_shows_is_the_example_file():
    for path, content in tutorial_files().items():
        real = PACKAGE / path
        assert real.is_file(), f"the tutorial shows {path}, which examples/retrieval does not have"
        want = real.read_text(encoding="utf-8")
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(True),
                content.splitlines(True),
                f"examples/retrieval/{path}",
                f"docs/plugins/tutorial.md: {path}",
            )
        )
        assert content == want, f"the tutorial's {path} differs from the example's:\n{diff}"


def test_the_tutorial_shows_every_file_the_package_is_built_from():
    missing = package_sources() - set(tutorial_files())
    assert not missing, f"files of examples/retrieval that the tutorial does not show: {sorted(missing)}"
    assert {"tests/conftest.py", "tests/test_contract.py", "tests/data/make_id_tokenizer.py"} <= set(tutorial_files())


def test_the_tutorials_tokenizer_script_writes_the_committed_tokenizer(tmp_path):
    package = write_package(tmp_path / "cas-spec-retrieval")
    data = package / "tests" / "data"
    subprocess.run([sys.executable, "make_id_tokenizer.py"], cwd=data, check=True, timeout=120)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (data / "id-tokenizer" / name).read_bytes() == (PACKAGE / "tests/data/id-tokenizer" / name).read_bytes()


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    return done


@pytest.mark.slow
def test_a_package_built_from_the_tutorial_installs_registers_and_decodes_exactly(tmp_path):
    package = write_package(tmp_path / "cas-spec-retrieval")
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k != "CAS_SPEC_PLUGINS"}
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(package),
        ],
        tmp_path,
        env,
    )
    env.update(PYTHONPATH=str(site), CAS_SPEC_LOAD_ENTRYPOINTS="1")
    cas_spec = str(Path(sys.executable).parent / "cas-spec")

    where = run([sys.executable, "-c", "import cas_spec_retrieval; print(cas_spec_retrieval.__file__)"], tmp_path, env)
    assert Path(where.stdout.strip()).is_relative_to(site), f"the plugin was imported from {where.stdout}"
    listed = json.loads(run([cas_spec, "plugins", "--json"], tmp_path, env).stdout)
    assert listed["strategies"].get("retrieval") == "retrieval", listed["strategies"]
    assert "retrieval" in listed["plugins"] and not listed["broken"], listed

    common = ["--model", str(STORIES), "--no-chat", "-n", "48"]
    plain = run([cas_spec, "generate", "--pipeline", "autoregressive", *common, STORY_PROMPT], package, env)
    retrieval = run(
        [cas_spec, "generate", "--pipeline", "pipelines/retrieval.yaml", "--stats", *common, STORY_PROMPT], package, env
    )
    assert retrieval.stdout == plain.stdout and len(plain.stdout.split()) > 20
    acceptance = float(re.search(r"mean acceptance\s+([\d.]+)", retrieval.stderr)[1])
    drafted = re.search(r"level rest\s+drafted (\d+), accepted (\d+)", retrieval.stderr)
    assert acceptance > 2.0 and int(drafted[2]) > 0, retrieval.stderr
