"""The Colab path is pinned: every notebook's first cell installs the release that
pyproject.toml names (a tag, never HEAD), and the site's launch buttons open the
notebooks of that tag (scripts/release.py)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("release", ROOT / "scripts/release.py")
release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release)


def test_every_notebook_installs_the_release_of_pyproject():
    repository, tag = release.setting()
    assert repository.startswith("https://github.com/") and tag.startswith("v")
    assert len(release.notebooks()) >= 16
    assert release.problems() == [], "run `python scripts/release.py stamp`"


def test_the_colab_cell_pins_a_tag_and_is_python():
    repository, tag = release.setting()
    cell = release.colab_cell()
    assert f'RELEASE = "git+{repository}@{tag}"' in cell  # a tag, not HEAD
    # IPython's `!` lines aside, the cell is plain Python
    python = "\n".join(
        line.replace("!", "pass  # ", 1) if line.lstrip().startswith("!") else line
        for line in cell.splitlines()
    )
    ast.parse(python)
    assert max(len(line) for line in cell.splitlines()) <= 88
