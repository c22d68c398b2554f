"""The README's Python snippets run, in order, in one namespace (the second uses the first's ``model``)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}  # each block defines what it reads (the second also uses the first's `model`)
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["result"].mean.shape == (8, 10)
    assert namespace["y"].shape == (4,)
