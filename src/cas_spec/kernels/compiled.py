"""Shared machinery of the compiled CPU kernels (`native.py`, `int8.py`): CPU check, compiler, build, load.

A kernel is C++ source compiled with the system compiler (`$CXX`, else `c++`, `g++`, `clang++`)
into a shared library in `$CAS_SPEC_CACHE/kernels/` (default `~/.cache/cas-spec/kernels/`), named
by a hash of source, compiler and flags, so a change of any of them builds a new file and a
present file is reused (about 2 s per build with g++ 12, then nothing). Builds go through a
temporary folder beside the target and an atomic rename: concurrent builders leave one complete
library. The caller loads it with `ctypes` and probes it numerically before use.

The kernels package is a leaf: it imports nothing of cas_spec but `cas_spec.paths` (the cache
folder), itself a leaf.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from cas_spec.paths import cache_dir

_OFF = ("0", "false", "no", "off")


def switched_off(variable: str) -> bool:
    """Whether the environment variable `variable` is set to 0/false/no/off."""
    return os.environ.get(variable, "1").strip().lower() in _OFF


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from `/proc/cpuinfo`; None where that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def cpu_reason(required: Sequence[str] = ("avx2", "fma")) -> str | None:
    """None on an x86-64 CPU with every flag in `required`, else why not. Without `/proc/cpuinfo`,
    torch's detected capability (AVX2 or AVX512) stands in for AVX2 + FMA."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs an x86-64 CPU, this is {platform.machine()}"
    names = "/".join(flag.upper() for flag in required)
    flags = cpu_flags()
    if flags is not None:
        return None if all(flag in flags for flag in required) else f"the CPU lacks {names}"
    if set(required) <= {"avx2", "fma"} and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return None
    return f"the CPU lacks {names}"


def compiler() -> str | None:
    """The path of the C++ compiler to use ($CXX, c++, g++, clang++), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def library_path(stem: str, source: str, compiler: str, flags: Sequence[str]) -> Path:
    """Where the library for this source, compiler and flags lives (built or not)."""
    digest = hashlib.sha256("\0".join((source, compiler, *flags)).encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"{stem}-{digest}.so"


def build(source: str, compiler: str, flags: Sequence[str], target: Path) -> None:
    """Compile `source` into `target` (atomically); raises RuntimeError with the compiler's message."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        src = Path(tmp) / (target.stem.split("-")[0] + ".cpp")
        src.write_text(source)
        out = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *flags, "-o", str(out), str(src)], capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            raise RuntimeError(f"compiling failed: {(result.stderr or result.stdout).strip()[-500:]}")
        os.replace(out, target)


def load(target: Path, build_with: tuple[str, str, Sequence[str]] | None = None) -> ctypes.CDLL:
    """The library at `target`, built first from `(source, compiler, flags)` when it is missing."""
    if not target.exists():
        if build_with is None:
            raise FileNotFoundError(target)
        build(*build_with, target)
    return ctypes.CDLL(str(target))
