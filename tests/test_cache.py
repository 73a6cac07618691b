import pytest

from book_utils import cache


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "cache"))


def test_profiles_never_share_a_folder(tmp_path):
    assert cache.artifact_dir("base-model", "ci") != cache.artifact_dir("base-model", "full")
    assert cache.artifact_dir("base-model", "ci").is_relative_to(tmp_path / "cache")


@pytest.mark.parametrize("name, profile", [("", "ci"), ("a/b", "ci"), (".hidden", "full"), ("ok", "fast")])
def test_bad_names_and_profiles_are_rejected(name, profile):
    with pytest.raises(ValueError):
        cache.artifact_dir(name, profile)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "data.jsonl"
    cache.atomic_write_text(target, "first\n")
    cache.atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]  # no temporary file left behind


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
        loaded = cache.load_or_build(target, build, lambda folder: (folder / "vocab.txt").read_text())
    assert loaded == "a\nb\n" and len(calls) == 1 and cache.is_complete(target)


def test_a_folder_without_the_marker_is_rebuilt(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.safetensors").write_bytes(b"half-written by an older run")
    cache.load_or_build(target, lambda folder: (folder / "weights.safetensors").write_bytes(b"ok"), lambda f: f)
    assert (target / "weights.safetensors").read_bytes() == b"ok"
