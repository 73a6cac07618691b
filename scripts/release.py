"""The one setting behind the Colab path: ``[project] version`` and
``[project.urls] Repository`` in pyproject.toml. A release ``vX.Y.Z`` is that git tag.

Every notebook's first cell installs that release in Colab (never HEAD, which can drift
away from the notebook a reader opened), and the site's launch buttons open the
notebooks of the same tag:

    python scripts/release.py check   # exit 1 and name what is out of step
    python scripts/release.py stamp   # rewrite cells and _config.yml from the setting

README.md, "Cutting a release", says when to run which.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELL = """\
# Colab only: install book_utils, release {tag} (the one this notebook belongs to),
# and its offline assets. Locally, `make book` did this and the cell does nothing.
import sys

if "google.colab" in sys.modules:
    RELEASE = "git+{repository}@{tag}"
    !pip install -q "llm-sft-book @ {{RELEASE}}"
    !python -m book_utils.assets install"""


def setting() -> tuple[str, str]:
    """``(repository URL, release tag)`` from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["urls"]["Repository"], f"v{project['version']}"


def notebooks() -> list[Path]:
    """The notebooks of the table of contents, in book order."""
    toc = (ROOT / "_toc.yml").read_text()
    paths = [ROOT / f"{doc}.ipynb" for doc in re.findall(r"file: (\S+)", toc)]
    return [path for path in paths if path.exists()]


def colab_cell() -> str:
    repository, tag = setting()
    return CELL.format(repository=repository, tag=tag)


def launch_branch() -> str:
    """The ``repository.branch`` of _config.yml (the launch buttons' git ref)."""
    found = re.search(r"^  branch: (\S+)$", (ROOT / "_config.yml").read_text(), re.M)
    if not found:
        raise ValueError("_config.yml has no `repository: branch:` line")
    return found.group(1)


def problems() -> list[str]:
    """What is out of step with the setting, one line each."""
    repository, tag = setting()
    out = []
    for path in notebooks():
        first = json.loads(path.read_text())["cells"][0]
        if "".join(first["source"]) != colab_cell():
            out.append(
                f"{path.relative_to(ROOT)}: the Colab cell does not install {tag}"
            )
    if launch_branch() != tag:
        out.append(f"_config.yml: the launch buttons open {launch_branch()}, not {tag}")
    return out


def stamp() -> None:
    """Write the Colab cell into every notebook and the tag into _config.yml."""
    for path in notebooks():
        notebook = json.loads(path.read_text())
        notebook["cells"][0]["source"] = colab_cell().splitlines(keepends=True)
        text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
        path.write_text(text)
    config = ROOT / "_config.yml"
    tag = setting()[1]
    config.write_text(
        re.sub(r"^  branch: \S+$", f"  branch: {tag}", config.read_text(), flags=re.M)
    )


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "check"
    if command == "stamp":
        stamp()
    elif command == "check":
        found = problems()
        print("\n".join(found) or f"every notebook installs {setting()[1]}")
        sys.exit(1 if found else 0)
    else:
        sys.exit(f"unknown command {command!r}: use `check` or `stamp`")
