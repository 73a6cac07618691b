"""The landing page stays true: its figure exists, every headline number it cites is a
value a notebook stored with ``glue`` (so the page reads it from the outputs), and the
CPU cost of each chapter is what the committed full-profile run took, read from the
notebooks' own execution timestamps."""

from __future__ import annotations

import datetime
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTRO = (ROOT / "book" / "intro.md").read_text()


def glued(notebook: Path) -> dict[str, str]:
    """The values a notebook stored with ``glue``, by key."""
    values = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if record:
                text = output["data"]["application/papermill.record/text/plain"]
                values[record["name"]] = text.strip("'\"")
    return values


def run_seconds(notebook: Path) -> float:
    """Wall time of the committed run: first cell started to last cell finished."""
    stamps = [
        datetime.datetime.fromisoformat(when)
        for cell in json.loads(notebook.read_text())["cells"]
        for key, when in cell.get("metadata", {}).get("execution", {}).items()
        if key in ("iopub.execute_input", "shell.execute_reply")
    ]
    assert stamps, f"{notebook.name} has no execution timestamps: run it in full"
    return (max(stamps) - min(stamps)).total_seconds()


def chapter_notebooks(index: str) -> list[Path]:
    """The notebooks of the chapter whose index page is ``index`` (from _toc.yml)."""
    lines = (ROOT / "_toc.yml").read_text().splitlines()
    start = lines.index(f"      - file: book/{index}")
    files = []
    for line in lines[start + 1 :]:
        if line.strip() == "sections:":
            continue
        if not line.startswith("          "):  # the next chapter or part
            break
        files += re.findall(r"- file: (\S+)", line)
    return [p for f in files if (p := ROOT / f"{f}.ipynb").exists()]


def cpu_minutes(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min"


def test_the_figure_is_drawn_and_shown():
    assert "```{figure} figures/data_line.svg" in INTRO
    svg = ET.parse(ROOT / "book" / "figures" / "data_line.svg").getroot()
    boxes = svg.findall("{http://www.w3.org/2000/svg}g")
    assert len(boxes) >= 12 and float(svg.get("width")) <= 1000


def test_every_headline_number_is_read_from_a_notebook():
    cited = re.findall(r"\{glue:text\}`([^`]+?)::(\w+):s`", INTRO)
    assert len(cited) >= 12
    for path, key in cited:
        assert key in glued(ROOT / "book" / path), f"{path} stores no glue key {key}"


ROWS = re.findall(r"^\| \[(\d) · [^]]+\]\(([\w/]+)\) \|(.*)\|\s*$", INTRO, re.M)


def test_the_chapter_map_has_every_chapter():
    assert [number for number, *_ in ROWS] == ["1", "2", "3", "4", "5", "6"]


@pytest.mark.parametrize("number, index, cells", ROWS)
def test_chapter_cost_is_the_measured_full_run(number, index, cells):
    notebooks = chapter_notebooks(index)
    assert notebooks, f"chapter {number} has no notebooks in _toc.yml"
    cpu = [cell.strip() for cell in cells.split("|")][-2]
    measured = cpu_minutes(sum(run_seconds(nb) for nb in notebooks))
    assert cpu == measured, (
        f"chapter {number}: the page says {cpu}, the committed runs took {measured}"
    )
