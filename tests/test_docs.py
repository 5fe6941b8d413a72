"""Every ```python block in docs/ runs: the blocks of one page run in order, in one process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if _BLOCK.search(p.read_text()))


def test_docs_have_runnable_examples():
    assert _pages(), "docs/ has no page with a ```python example"


#: Pages whose examples run for minutes: soak tests (`make soak`), kept out of `make test`
#: to hold it under 20 minutes. experiments.md runs every experiment plan for about
#: 165 s; the plans are scored against the simulator's truth in test_experiment_plans.
SOAK_PAGES = {"experiments.md"}


def _params() -> list:
    return [
        pytest.param(p, marks=pytest.mark.soak) if p.name in SOAK_PAGES else p
        for p in _pages()
    ]


@pytest.mark.parametrize("page", _params(), ids=lambda p: str(p.relative_to(DOCS)))
def test_doc_examples_run(page: Path, tmp_path: Path):
    code = "\n\n".join(_BLOCK.findall(page.read_text()))
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, MAGSCOPE_DATA_DIR=str(tmp_path / "magscope-data"), MPLBACKEND="Agg")
    env.pop("MAGSCOPE_TILED_URI", None)
    env.pop("MAGSCOPE_TILED_API_KEY", None)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{page.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def test_readme_first_screen_gives_the_two_commands():
    first_screen = "\n".join(README.read_text().splitlines()[:40])
    assert "make demo" in first_screen and "make test" in first_screen
