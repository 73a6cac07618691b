"""Pytest plumbing shared by the unit tests, nbval notebook runs and the site test.

At the end of a run it prints how long each notebook took to execute (CI's notebook
timing table).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

_notebook_seconds: dict[str, float] = defaultdict(float)
_notebook_failed: set[str] = set()


def pytest_runtest_logreport(report):
    path = report.location[0] if report.location else ""
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration
        if report.failed:
            _notebook_failed.add(path)


def pytest_terminal_summary(terminalreporter):
    if not _notebook_seconds:
        return
    terminalreporter.section(
        f"notebook execution time ({os.environ.get('BOOK_PROFILE', 'full')} profile)"
    )
    width = max(len(p) for p in _notebook_seconds)
    for path, seconds in _notebook_seconds.items():
        status = "FAILED" if path in _notebook_failed else "ok"
        terminalreporter.write_line(f"{path:<{width}}  {seconds:7.1f} s  {status}")
    terminalreporter.write_line(
        f"{'total':<{width}}  {sum(_notebook_seconds.values()):7.1f} s"
    )


def pytest_ignore_collect(collection_path: Path, config):
    """Never collect notebooks from build output, checkpoints or the virtualenv."""
    parts = set(collection_path.parts)
    return bool(parts & {"_build", ".ipynb_checkpoints", ".venv", ".cache"}) or None
