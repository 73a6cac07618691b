import pytest

from book_utils import cache


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "cache"))


def test_profiles_never_share_a_folder(tmp_path):
    assert cache.artifact_dir("base-model", "ci") != cache.artifact_dir(
        "base-model", "full"
    )
    assert cache.artifact_dir("base-model", "ci").is_relative_to(tmp_path / "cache")


@pytest.mark.parametrize(
    "name, profile", [("", "ci"), ("a/b", "ci"), (".hidden", "full"), ("ok", "fast")]
)
def test_bad_names_and_profiles_are_rejected(name, profile):
    with pytest.raises(ValueError):
        cache.artifact_dir(name, profile)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "data.jsonl"
    cache.atomic_write_text(target, "first\n")
    cache.atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert [p.name for p in tmp_path.iterdir()] == [
        "data.jsonl"
    ]  # no temporary file left behind


def test_interrupted_build_leaves_nothing_loadable(tmp_path):
    target = tmp_path / "model"

    def failing_build(folder):
        (folder / "weights.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.load_or_build(target, failing_build, lambda folder: folder)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_load_or_build_builds_once(tmp_path):
    target, calls = tmp_path / "tok", []

    def build(folder):
        calls.append(folder)
        (folder / "vocab.txt").write_text("a\nb\n")

    for _ in range(2):
        loaded = cache.load_or_build(
            target, build, lambda folder: (folder / "vocab.txt").read_text()
        )
    assert loaded == "a\nb\n" and len(calls) == 1 and cache.is_complete(target)


def test_a_folder_without_the_marker_is_rebuilt(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.safetensors").write_bytes(b"half-written by an older run")
    cache.load_or_build(
        target,
        lambda folder: (folder / "weights.safetensors").write_bytes(b"ok"),
        lambda f: f,
    )
    assert (target / "weights.safetensors").read_bytes() == b"ok"


KILL_DURING_REPLACE = """
import os, signal, sys
from pathlib import Path
from book_utils import cache

real_replace, calls = os.replace, []

def replace(src, dst):  # os.replace, but the process dies at call number KILL_AT
    calls.append(src)
    if len(calls) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

os.replace = replace
with cache.atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "version.txt").write_text("new")
"""


@pytest.mark.parametrize("kill_at, survivor", [(1, "old"), (2, "old"), (3, "new")])
def test_a_replace_killed_at_any_rename_leaves_a_complete_version(
    tmp_path, kill_at, survivor
):
    """A real process is killed (SIGKILL, no cleanup) at each rename of the replace; the
    folder that a loader then finds is complete, and it is the old version until the new
    one is fully in place."""
    import subprocess
    import sys

    target = tmp_path / "checkpoint"
    with cache.atomic_dir(target) as tmp:
        (tmp / "version.txt").write_text("old")
    script = tmp_path / "kill.py"
    script.write_text(KILL_DURING_REPLACE)
    done = subprocess.run(
        [sys.executable, str(script), str(target), str(kill_at)], capture_output=True
    )
    assert done.returncode == (-9 if kill_at <= 2 else 0), done.stderr.decode()[-500:]
    assert cache.is_complete(target)
    assert (target / "version.txt").read_text() == survivor
    with cache.atomic_dir(target) as tmp:  # the next write replaces it normally
        (tmp / "version.txt").write_text("newest")
    assert (target / "version.txt").read_text() == "newest"
    assert not (tmp_path / ".checkpoint.previous").exists()
