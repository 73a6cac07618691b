"""The artifact cache: where chapters leave models and data for later chapters, written atomically.

Each chapter hands the next a saved artifact (a tokenizer, a base model, an SFT dataset). A later chapter
loads it from the cache when present, or rebuilds it with the same ``book_utils`` code when missing, so
every notebook still runs alone (in Colab, say). Artifacts of the ``ci`` and ``full`` profiles live in
separate folders and never mix. ``BOOK_CACHE`` moves the cache (``make`` points it inside the project).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Written last into a finished artifact folder; a folder without it was interrupted and is never loaded.
COMPLETE_MARKER = ".complete"


def cache_root() -> Path:
    """``$BOOK_CACHE`` if set, else ``~/.cache/llm-sft-book``."""
    return Path(os.environ.get("BOOK_CACHE") or Path.home() / ".cache" / "llm-sft-book").expanduser()


def artifact_dir(name: str, profile: str) -> Path:
    """Folder of artifact ``name`` built with ``profile`` (e.g. ``artifact_dir("base-model", "full")``)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"artifact name must be a plain folder name, got {name!r}")
    if profile not in ("ci", "full"):
        raise ValueError(f"profile must be 'ci' or 'full', got {profile!r}")
    return cache_root() / profile / name


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see all of it or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: Path | str):
    """Build a folder in a temporary sibling and move it into place only if the block succeeds.

    >>> with atomic_dir(some_path) as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).touch()
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_complete(path: Path | str) -> bool:
    """True when ``path`` is an artifact folder that :func:`atomic_dir` finished writing."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def load_or_build(path: Path | str, build: Callable[[Path], None], load: Callable[[Path], T]) -> T:
    """Load the artifact at ``path``; if it is missing or incomplete, ``build(tmp_dir)`` it first, atomically."""
    path = Path(path)
    if not is_complete(path):
        with atomic_dir(path) as tmp:
            build(tmp)
    return load(path)
