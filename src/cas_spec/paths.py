"""Where cas-spec keeps what it measures and fetches, and how it writes there (a leaf: imports no
other cas_spec module, so every layer may use it).

The cache folder is `$CAS_SPEC_CACHE`, default `~/.cache/cas-spec`: converted models (`models/`),
calibration tables (`costs/`), compiled kernels (`kernels/`), skip sets (`skip_sets/`) and draft
vocabularies (`draft_vocab/`). Files are written whole or not at all (`write_text_atomically`), so a
reader never sees half a file and concurrent writers leave one complete file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CACHE_ENV = "CAS_SPEC_CACHE"


def cache_dir() -> Path:
    """The cache folder: `$CAS_SPEC_CACHE`, default `~/.cache/cas-spec` (not created here)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cas-spec")


def write_text_atomically(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file beside it and an atomic rename; creates the
    folder. Returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = ["CACHE_ENV", "cache_dir", "write_text_atomically"]
