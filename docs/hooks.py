"""MkDocs hooks: draw the guide's figures (``docs/figures.py``) on every build and add them to the site.

The PNGs are generated in memory and added as files of the build under ``figures/`` (``mkdocs build`` and
``mkdocs serve`` alike), so pages link to ``../figures/<name>.png`` and nothing generated is committed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mkdocs.structure.files import File, Files

_DOCS = Path(__file__).resolve().parent


def on_files(files: Files, config) -> Files:
    """Render every figure of ``docs/figures.py`` and add it to the build's files."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's and numba's thread pools share the CPU politely
    sys.path.insert(0, str(_DOCS))
    try:
        import figures
    finally:
        sys.path.remove(str(_DOCS))
    start = time.perf_counter()
    for name, png in figures.render_all().items():
        files.append(File.generated(config, f"figures/{name}", content=png))
    print(f"INFO    -  docs/hooks.py: drew {len(figures.FIGURES)} figures in {time.perf_counter() - start:.1f} s")
    return files
