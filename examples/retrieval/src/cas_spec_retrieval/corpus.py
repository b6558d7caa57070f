"""The corpus: which files it holds, whether it holds any text, and its content hash.

A corpus is a UTF-8 text file, or a directory whose `.txt` and `.md` files (recursively, in
sorted order of their relative paths) are the documents. Relative paths are relative to the
working directory. Each file is one document: no match or continuation crosses two files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SUFFIXES = (".txt", ".md")


def corpus_files(path: str | Path) -> list[Path]:
    """The corpus's files; ValueError for a missing path or a directory without text files."""
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if root.is_dir():
        files = sorted(
            (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            raise ValueError(f"corpus {path}: the directory holds no {' or '.join(SUFFIXES)} file")
        return files
    raise ValueError(f"corpus {path}: no such file or directory")


def has_text(files: list[Path]) -> bool:
    """Whether any file holds a non-blank character (reads only until it finds one)."""
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 16):
                if chunk.strip():
                    return True
    return False


def check_corpus(path: str) -> str:
    """`path` if it names a corpus holding text; ValueError saying what is wrong otherwise."""
    if not has_text(corpus_files(path)):
        raise ValueError(f"corpus {path}: empty (no text in {', '.join(str(f) for f in corpus_files(path))})")
    return path


def read_documents(path: str | Path) -> list[str]:
    """The text of each file of the corpus; ValueError for a file that is not UTF-8."""
    documents = []
    for file in corpus_files(path):
        try:
            documents.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"corpus {path}: {file} is not UTF-8 text ({exc})") from None
    return documents


def corpus_digest(path: str | Path) -> str:
    """sha256 over the corpus's relative file names and contents: equal digests, equal corpora."""
    root = Path(path).expanduser()
    digest = hashlib.sha256()
    for file in corpus_files(path):
        name = "" if root.is_file() else file.relative_to(root).as_posix()  # a file: its content only
        content = file.read_bytes()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()
