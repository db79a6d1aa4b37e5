"""The Python examples of the docs run: each block of a page is executed on its own, so
a renamed option or a changed signature fails here, not in a reader's hands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
# Pages whose every Python block is complete and runs without a server.
RUNNABLE = ["flow-control.md", "workflows.md"]
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for page in RUNNABLE:
        for i, match in enumerate(_BLOCK.finditer((DOCS / page).read_text())):
            out.append((page, i + 1, match.group(1)))
    return out


@pytest.mark.parametrize(("page", "n", "code"), _blocks(), ids=lambda v: str(v)[:20])
def test_every_python_example_of_the_page_runs(page: str, n: int, code: str) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page}_{n}"}
    exec(compile(code, f"{page} block {n}", "exec"), namespace)
    mux = namespace.get("mux")
    assert mux is not None, f"{page} block {n} defines no mux"
