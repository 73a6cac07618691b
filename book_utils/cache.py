"""The artifact cache: where chapters leave models and data for later chapters, written
atomically.

Each chapter hands the next a saved artifact (a tokenizer, a base model, an SFT
dataset). A later chapter loads it from the cache when present, or rebuilds it with the
same ``book_utils`` code when missing, so every notebook still runs alone (in Colab,
say). Artifacts of the ``ci`` and ``full`` profiles live in separate folders and never
mix. ``BOOK_CACHE`` moves the cache (``make`` points it inside the project).
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

#: Written last into a finished artifact folder; a folder without it was interrupted and
#: is never loaded.
COMPLETE_MARKER = ".complete"


def cache_root() -> Path:
    """``$BOOK_CACHE`` if set, else ``~/.cache/llm-sft-book``."""
    return Path(
        os.environ.get("BOOK_CACHE") or Path.home() / ".cache" / "llm-sft-book"
    ).expanduser()


def artifact_dir(name: str, profile: str) -> Path:
    """Folder of artifact ``name`` built with ``profile`` (e.g.
    ``artifact_dir("base-model", "full")``)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"artifact name must be a plain folder name, got {name!r}")
    if profile not in ("ci", "full"):
        raise ValueError(f"profile must be 'ci' or 'full', got {profile!r}")
    return cache_root() / profile / name


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see all
    of it or nothing."""
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


def _previous(path: Path) -> Path:
    """Where :func:`atomic_dir` parks the old version of ``path`` while the new one
    moves in."""
    return path.with_name(f".{path.name}.previous")


def _recover(path: Path) -> None:
    """Undo a replace that was killed between its two renames: the old, complete version
    comes back."""
    previous = _previous(path)
    if not path.exists() and (previous / COMPLETE_MARKER).is_file():
        os.replace(previous, path)


@contextmanager
def atomic_dir(path: Path | str):
    """Build a folder in a temporary sibling and move it into place only if the block
    succeeds.

    The replace never destroys the old version before the new one is in place: (1) the
    old folder is renamed aside to ``.<name>.previous``, (2) the new one is renamed to
    ``path``, (3) only then is the old one deleted. A process killed between (1) and (2)
    leaves ``path`` missing and the old, complete folder aside; :func:`is_complete`
    (which every loader calls first) moves it back. So at every instant a complete
    version is on disk, either the old or the new.

    >>> with atomic_dir(some_path) as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    )
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).touch()
        _recover(path)
        previous = _previous(path)
        # left over from an earlier replace that was killed after its step (2)
        if previous.exists():
            shutil.rmtree(previous)
        if path.exists():
            # (1) the old version steps aside, still complete
            os.replace(path, previous)
        os.replace(tmp, path)  # (2) the new version takes its place
        # (3) only now is the old version deleted
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_complete(path: Path | str) -> bool:
    """True when ``path`` is an artifact folder that :func:`atomic_dir` finished writing
    (after undoing a replace that was killed halfway, see :func:`atomic_dir`)."""
    path = Path(path)
    _recover(path)
    return (path / COMPLETE_MARKER).is_file()


def load_or_build(
    path: Path | str, build: Callable[[Path], None], load: Callable[[Path], T]
) -> T:
    """Load the artifact at ``path``; if it is missing or incomplete, ``build(tmp_dir)``
    it first, atomically."""
    path = Path(path)
    if not is_complete(path):
        with atomic_dir(path) as tmp:
            build(tmp)
    return load(path)
