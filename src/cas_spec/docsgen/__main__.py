"""`python -m cas_spec.docsgen [--docs DIR] [--check] [--diagram]` (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cas_spec.docsgen import DIAGRAM, REGENERATE
from cas_spec.docsgen.diagram import draw
from cas_spec.docsgen.pages import stale_pages, write_pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cas_spec.docsgen", description=__doc__)
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="the docs folder (default: docs)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    parser.add_argument("--diagram", action="store_true", help=f"also redraw {DIAGRAM} (needs matplotlib)")
    args = parser.parse_args(argv)
    if not args.docs.is_dir():
        parser.error(f"no docs folder at '{args.docs}' (run from the repository root or pass --docs)")
    if args.check:
        stale = stale_pages(args.docs)
        for name in stale:
            print(f"stale: {args.docs / name} (regenerate: {REGENERATE})", file=sys.stderr)
        return 1 if stale else 0
    for path in write_pages(args.docs):
        print(f"wrote {path}")
    if args.diagram:
        print(f"wrote {draw(args.docs / DIAGRAM)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
