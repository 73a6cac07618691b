"""One call per notebook: seeds, device, dtype, profile and offline detection.

Every chapter starts with ``ctx = book_utils.setup()`` (taught in chapter 1, "How to run
this book"). The profile decides sizes: ``BOOK_PROFILE=ci`` runs the same code path as
``full`` with tiny data and few steps, so CI can execute every notebook in minutes while
the committed outputs come from ``full``.
"""

from __future__ import annotations

import os
import platform
import random
import socket
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

PROFILES = ("ci", "full")
HUB_HOST = "huggingface.co"

T = TypeVar("T")


@dataclass(frozen=True)
class BookContext:
    """What a notebook needs to know about where it runs; built by :func:`setup`."""

    profile: str
    seed: int
    device: torch.device
    dtype: torch.dtype
    offline: bool

    @property
    def is_ci(self) -> bool:
        return self.profile == "ci"

    def pick(self, *, ci: T, full: T) -> T:
        """Return the value for the current profile, e.g.
        ``ctx.pick(ci=200, full=20_000)`` steps."""
        return ci if self.is_ci else full

    def summary(self) -> str:
        versions = f"torch {torch.__version__}"
        try:
            import transformers

            versions += f", transformers {transformers.__version__}"
        except ImportError:  # pragma: no cover - transformers is a declared dependency
            pass
        network = "offline" if self.offline else "online"
        return (
            f"profile={self.profile} | device={self.device.type} | "
            f"dtype={str(self.dtype).removeprefix('torch.')}"
            f" | seed={self.seed} | {network} | "
            f"Python {platform.python_version()}, {versions}"
        )


def read_profile() -> str:
    """The profile from ``BOOK_PROFILE`` (default ``full``); anything else is an error,
    not a silent default."""
    profile = os.environ.get("BOOK_PROFILE", "full").strip().lower()
    if profile not in PROFILES:
        raise ValueError(
            f"BOOK_PROFILE={os.environ['BOOK_PROFILE']!r} is not a profile; "
            f"use one of {PROFILES} "
            "(ci: tiny sizes for tests, full: the sizes whose outputs the book shows)."
        )
    return profile


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a profile gives the same numbers
    twice."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


def pick_device(preferred: str | None = None) -> torch.device:
    """cuda, then mps, then cpu; ``BOOK_DEVICE`` or ``preferred`` forces one (e.g.
    ``cpu`` on a GPU box)."""
    name = preferred or os.environ.get("BOOK_DEVICE")
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {name!r} was requested but torch sees no CUDA GPU"
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(
                f"device {name!r} was requested but MPS is not available"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it (Ampere and newer), fp32 elsewhere (a T4 has no
    bf16; CPUs train in fp32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def detect_offline(timeout: float = 1.0) -> bool:
    """True when the Hugging Face Hub cannot be reached (or ``HF_HUB_OFFLINE=1`` says
    so).

    Offline, we also set ``HF_HUB_OFFLINE=1`` so that transformers and datasets fail
    fast instead of retrying.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return True
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return False
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        return True


def setup(
    seed: int = 0, *, device: str | None = None, verbose: bool = True
) -> BookContext:
    """Prepare a notebook: profile, seeds, device, dtype, offline flag; print them in
    one line.

    >>> ctx = setup(seed=0, verbose=False)
    >>> ctx.pick(ci=2, full=2000) in (2, 2000)
    True
    """
    from book_utils.plotting import use_book_style

    profile = read_profile()
    seed_everything(seed)
    use_book_style()
    chosen = pick_device(device)
    ctx = BookContext(
        profile=profile,
        seed=seed,
        device=chosen,
        dtype=pick_dtype(chosen),
        offline=detect_offline(),
    )
    if verbose:
        print(ctx.summary())
    return ctx
