"""Timing generation: the latency of one new token with and without the KV cache
against context length, the wall-clock time of a whole generation, and throughput
against batch size. :func:`synchronize` makes a clock read include queued GPU work.

Taught in chapter 5.1, book/05_deployment/01_decoding.ipynb ("Our own Llama, on
SmolLM2's real weights", "Batching and left padding").
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from book_utils.decoding.generation import generate, left_pad

# --- timing: the KV cache and batching ------------------------------------------------


def synchronize() -> None:
    """Wait for queued GPU work, so a clock read measures it: CUDA kernels run
    asynchronously (no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@torch.no_grad()
def step_latency(
    model,
    context_length: int,
    *,
    use_cache: bool,
    batch_size: int = 1,
    repeats: int = 3,
    seed: int = 0,
):
    """Seconds to produce *one* new token after ``context_length`` tokens (median of
    ``repeats``).

    With the cache the prefix's keys and values are computed beforehand (untimed) and
    the step runs the model on one token; without it the step runs the model on all
    ``context_length + 1`` tokens.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.randint(
        0, model.config.vocab_size, (batch_size, context_length + 1), generator=gen
    ).to(device)
    times = []
    for _ in range(repeats):
        if use_cache:
            past = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
            synchronize()
            start = time.perf_counter()
            model(input_ids=ids[:, -1:], past_key_values=past, use_cache=True)
        else:
            synchronize()
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
        synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def time_generation(
    model, input_ids: torch.Tensor, max_new_tokens: int, *, use_cache: bool, **kw
) -> float:
    """Wall-clock seconds of :func:`generate` (greedy, no early stop) for
    ``max_new_tokens`` tokens."""
    synchronize()
    start = time.perf_counter()
    out = generate(model, input_ids, max_new_tokens, use_cache=use_cache, **kw)
    synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape[1] == input_ids.shape[1] + max_new_tokens
    return elapsed


def batch_throughput(
    model, tokenizer, prompts: Sequence[str], batch_size: int, max_new_tokens: int
) -> dict:
    """Generate ``max_new_tokens`` greedy tokens for each prompt, ``batch_size`` prompts
    at a time (left padded, no early stop), and return
    ``{"batch_size", "latency_s" (per batch), "tokens_per_s" (new tokens/s)}``."""
    if batch_size < 1 or batch_size > len(prompts):
        raise ValueError(
            f"batch_size must be between 1 and len(prompts)={len(prompts)}, got "
            f"{batch_size}"
        )
    n_batches = len(prompts) // batch_size
    synchronize()
    start = time.perf_counter()
    for b in range(n_batches):
        ids, mask = left_pad(tokenizer, prompts[b * batch_size : (b + 1) * batch_size])
        generate(model, ids, max_new_tokens, attention_mask=mask)
    synchronize()
    elapsed = time.perf_counter() - start
    return {
        "batch_size": batch_size,
        "latency_s": elapsed / n_batches,
        "tokens_per_s": n_batches * batch_size * max_new_tokens / elapsed,
    }
