"""Speed measurements: this machine's achieved FLOP/s on matrix products
(:func:`measure_matmul_flops`, the MFU denominator) and timed optimizer steps
(:func:`time_train_steps`), for chapter 3.2's throughput section and
``scripts/benchmark_pretraining.py``.

Chapter 3.2, book/03_pretraining/02_causal_lm.ipynb.
"""

from __future__ import annotations

import time

import torch

from book_utils.pretraining.config import TrainConfig
from book_utils.pretraining.train import _optimizer


def measure_matmul_flops(
    device="cpu",
    dtype: torch.dtype = torch.float32,
    n: int = 1024,
    seconds: float = 1.0,
) -> float:
    """This machine's achieved FLOP/s on large square matrix products, the practical
    peak for MFU (chapter 3).

    Runs ``n × n`` products for about ``seconds`` (after a warm-up) and counts 2n³
    FLOPs each.
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        a @ b
        count += 1
        if device.type == "cuda" and count % 10:
            continue
        sync()
    sync()
    return 2 * n**3 * count / (time.perf_counter() - began)


def time_train_steps(
    model,
    batch: torch.Tensor,
    cfg: TrainConfig,
    steps: int = 10,
    warmup: int = 2,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """``(seconds per step, seconds of the warm-up steps)`` of full optimizer steps
    (forward, backward, clipping, AdamW) on one fixed ``batch``: the throughput
    measurements of chapter 3 and its benchmark script. Warm-up steps are not timed
    (they include ``torch.compile``'s compilation when it is used)."""
    optimizer = _optimizer(model, cfg)
    device = batch.device
    mixed = dtype in (torch.bfloat16, torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=mixed)

    def step():
        with autocast:
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    began = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - began) / steps, warm
