import pytest
import torch

import book_utils
from book_utils import environment


def test_profile_defaults_to_full(monkeypatch):
    monkeypatch.delenv("BOOK_PROFILE", raising=False)
    assert environment.read_profile() == "full"


@pytest.mark.parametrize(
    "value, expected", [("ci", "ci"), (" CI ", "ci"), ("full", "full")]
)
def test_profile_is_read_from_env(monkeypatch, value, expected):
    monkeypatch.setenv("BOOK_PROFILE", value)
    assert environment.read_profile() == expected


def test_unknown_profile_is_an_error_that_names_the_choices(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "fast")
    with pytest.raises(ValueError, match=r"'fast' is not a profile.*ci.*full"):
        environment.read_profile()


def test_pick_follows_profile(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "ci")
    ctx = book_utils.setup(verbose=False)
    assert ctx.is_ci and ctx.pick(ci=1, full=2) == 1
    monkeypatch.setenv("BOOK_PROFILE", "full")
    assert book_utils.setup(verbose=False).pick(ci=1, full=2) == 2


def test_same_seed_same_numbers():
    book_utils.setup(seed=123, verbose=False)
    first = torch.randn(5)
    book_utils.setup(seed=123, verbose=False)
    torch.testing.assert_close(torch.randn(5), first)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="non-negative int"):
        environment.seed_everything(seed)


def test_cpu_gets_float32_and_can_be_forced():
    cpu = environment.pick_device("cpu")
    assert cpu.type == "cpu" and environment.pick_dtype(cpu) == torch.float32


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the error on a machine without CUDA"
)
def test_requesting_missing_cuda_says_so():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        environment.pick_device("cuda")


def test_offline_flag_from_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert environment.detect_offline() is True


def test_setup_prints_one_summary_line(monkeypatch, capsys):
    monkeypatch.setenv("BOOK_PROFILE", "ci")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    book_utils.setup(seed=7)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert (
        "profile=ci" in out[0]
        and "seed=7" in out[0]
        and "offline" in out[0]
        and "torch" in out[0]
    )
