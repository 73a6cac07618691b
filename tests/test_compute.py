"""book_utils.compute (FLOPs, seconds, readable units) and book_utils.checks."""

import numpy as np
import pytest

from book_utils import checks, compute


def test_training_seconds_is_six_n_d_over_the_sustained_rate():
    assert compute.training_flops(10, 100) == 6000
    assert compute.training_seconds(1e8, 1e6, 1e12, mfu=0.5) == pytest.approx(
        6 * 1e8 * 1e6 / 0.5e12
    )
    with pytest.raises(ValueError, match="mfu"):
        compute.training_seconds(1e8, 1e6, 1e12, mfu=0)
    assert compute.training_time(100, 10, 2, tokens_per_second=50) == 40


def test_readable_units():
    assert compute.format_duration(42) == "42.0 s"
    assert compute.format_duration(90) == "1.5 min"
    assert compute.format_duration(2 * 86400) == "2.0 days"
    assert compute.human_bytes(90.9e6) == "90.9 MB"
    assert compute.human_bytes(512) == "512 B"


@pytest.mark.parametrize("good", [1, 7, np.int64(3)])
def test_positive_int_accepts_whole_numbers(good):
    assert checks.positive_int("n", good) == good
    assert type(checks.positive_int("n", good)) is int


@pytest.mark.parametrize("bad", [0, -2, 1.5, "3", True, None])
def test_positive_int_names_the_argument(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        checks.positive_int("batch_size", bad)
