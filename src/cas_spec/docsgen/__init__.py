"""Generated documentation pages, so that reference pages cannot drift from the code.

    python -m cas_spec.docsgen            # rewrite docs/reference/{yaml,hooks,plugin-api}.md
    python -m cas_spec.docsgen --check    # exit 1 and name the stale pages
    python -m cas_spec.docsgen --diagram  # also redraw docs/images/step.png (needs matplotlib)

The tests (`tests/test_docs_reference.py`) fail when a committed page differs from what the
generators produce now (`pages.py`).
"""

from __future__ import annotations

REGENERATE = "python -m cas_spec.docsgen"
DIAGRAM = "images/step.png"
