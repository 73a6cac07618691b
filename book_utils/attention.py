"""Scaled dot-product attention, masks, multi-head attention and the cost of attention,
from scratch.

Taught in chapter 2, "Scaled dot-product attention". Everything here is checked against
PyTorch's own implementations (``torch.nn.functional.scaled_dot_product_attention`` and
``torch.nn.MultiheadAttention``) in ``tests/test_attention.py`` and in the chapter.

Mask convention (the same as ``F.scaled_dot_product_attention``): a **boolean** mask is
``True`` where a query *may attend* to a key; a **float** mask is *added* to the scores
(``0`` keeps, ``-inf`` removes). Beware: ``torch.nn.MultiheadAttention`` and
``torch.nn.Transformer*Layer`` use the opposite boolean convention (``True`` = *ignore*)
for their ``attn_mask`` and ``key_padding_mask`` arguments.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from book_utils.positions import apply_rope

__all__ = [
    "scaled_dot_product_attention",
    "causal_mask",
    "padding_mask",
    "MultiHeadAttention",
    "copy_from_torch_mha",
    "attention_cost",
]


# --- validation helpers ---------------------------------------------------------------


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (..., n, d) with at least 2 dimensions, got shape "
            f"{tuple(x.shape)}; for a single vector use x[None, :]"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert it "
            "with .float()"
        )
    return x


def _broadcast(shapes: dict[str, tuple[int, ...]], what: str) -> tuple[int, ...]:
    try:
        return tuple(torch.broadcast_shapes(*shapes.values()))
    except RuntimeError:
        listed = ", ".join(f"{k}={v}" for k, v in shapes.items())
        raise ValueError(f"{what} do not broadcast: {listed}") from None


def _check_mask(
    attn_mask: torch.Tensor, q: torch.Tensor, target: tuple[int, ...]
) -> None:
    if not isinstance(attn_mask, torch.Tensor):
        raise ValueError(
            f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}"
        )
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise ValueError(
            f"attn_mask has dtype {attn_mask.dtype}; use a bool mask (True = may "
            "attend) or a float mask added to the scores (0 or -inf). A Hugging Face "
            "0/1 attention_mask must go through padding_mask() first."
        )
    if attn_mask.is_floating_point() and attn_mask.dtype != q.dtype:
        raise ValueError(
            f"float attn_mask has dtype {attn_mask.dtype} but q has {q.dtype}; cast "
            "the mask with .to(q.dtype)"
        )
    try:
        shape = torch.broadcast_shapes(attn_mask.shape, target)
    except RuntimeError:
        shape = None
    if shape != torch.Size(target):
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the "
            f"scores' shape {target} (..., n_q, n_k); a padding mask for keys has "
            "shape (B, 1, 1, n_k), a causal mask (n_q, n_k)"
        )


# --- the function ---------------------------------------------------------------------


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    fully_masked: Literal["raise", "zero"] = "raise",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention ``softmax(q kᵀ · scale + M) v`` with its weights, written out step by
    step.

    Shapes: ``q`` is ``(..., n_q, d_k)``, ``k`` is ``(..., n_k, d_k)``, ``v`` is
    ``(..., n_k, d_v)``; the leading dimensions (batch, heads) broadcast. Returns
    ``(output, weights)`` of shapes ``(..., n_q, d_v)`` and ``(..., n_q, n_k)``; each
    row of ``weights`` is a probability distribution over the keys (the softmax is taken
    *row-wise*, over the last axis).

    ``scale`` defaults to ``1/sqrt(d_k)`` (why: chapter 2 measures that dot products of
    random vectors have variance ``d_k``). ``attn_mask`` is boolean (``True`` = may
    attend, as in ``F.scaled_dot_product_attention``) or float (added to the scores);
    ``is_causal=True`` additionally hides future keys (top-left aligned, as in PyTorch).
    Unlike PyTorch we accept ``attn_mask`` and ``is_causal`` together and combine them.

    A query row whose keys are *all* masked would compute softmax over ``-inf`` only,
    i.e. ``0/0 = NaN``. ``fully_masked="raise"`` (default) reports such rows as an
    error; ``"zero"`` gives them zero weights and a zero output, which is what PyTorch's
    SDPA returns since 2.5.

    Taught in chapter 2, "Scaled dot-product attention".
    """
    q, k, v = _check_tensor("q", q), _check_tensor("k", k), _check_tensor("v", v)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"d_k mismatch: q has d_k={q.shape[-1]} (shape {tuple(q.shape)}) but k has "
            f"d_k={k.shape[-1]} (shape {tuple(k.shape)}); queries and keys must have "
            "the same last dimension"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must hold the same number of positions n_k: k has {k.shape[-2]} "
            f"(shape {tuple(k.shape)}), v has {v.shape[-2]} (shape {tuple(v.shape)})"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if fully_masked not in ("raise", "zero"):
        raise ValueError(
            f"fully_masked must be 'raise' or 'zero', got {fully_masked!r}"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    batch = _broadcast(
        {"q": q.shape[:-2], "k": k.shape[:-2], "v": v.shape[:-2]},
        "the leading (batch, head) dimensions of q, k, v",
    )
    n_q, n_k = q.shape[-2], k.shape[-2]
    target = (*batch, n_q, n_k)

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # (..., n_q, n_k): one score per (query, key) pair
    scores = (q @ k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        _check_mask(attn_mask, q, target)
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    if is_causal:
        scores = scores.masked_fill(
            ~causal_mask(n_q, n_k, device=q.device), float("-inf")
        )

    dead = torch.isneginf(scores).all(dim=-1)  # rows with no visible key
    has_dead = bool(dead.any())
    if has_dead:
        if fully_masked == "raise":
            where = dead.nonzero()[:3].tolist()
            raise ValueError(
                f"{int(dead.sum())} query row(s) have every key masked (first at index "
                f"{where}); softmax over all -inf is 0/0 = NaN. Fix the mask (e.g. "
                "left padding + causal mask hides everything from pad queries: use "
                "right padding) or pass fully_masked='zero' to give such rows zero "
                "weights."
            )
        scores = scores.masked_fill(dead.unsqueeze(-1), 0.0)
    weights = torch.softmax(scores, dim=-1)  # row-wise
    if has_dead:
        weights = weights.masked_fill(dead.unsqueeze(-1), 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


def causal_mask(
    n_q: int, n_k: int | None = None, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean ``(n_q, n_k)`` lower-triangular mask: query ``i`` may attend to keys
    ``j <= i`` (``True``).

    Top-left aligned like ``torch.ones(n_q, n_k).tril()``, which is what
    ``F.scaled_dot_product_attention(is_causal=True)`` uses. A causal (因果) mask is
    what makes a decoder a language model: position ``i`` cannot peek at the tokens it
    must predict. Taught in chapter 2.
    """
    n_k = n_q if n_k is None else n_k
    for name, n in (("n_q", n_q), ("n_k", n_k)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Turn a Hugging Face ``(B, n)`` 0/1 ``attention_mask`` into a boolean
    ``(B, 1, 1, n)`` key mask.

    ``1`` marks a real token, ``0`` a pad (填充) token. The result is ``True`` where a
    key is a real token and broadcasts over heads and queries against scores of shape
    ``(B, h, n_q, n)``; combine it with a causal mask by ``&``. Taught in chapter 2,
    "Masks".
    """
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            "attention_mask must be a torch.Tensor, got "
            f"{type(attention_mask).__name__}"
        )
    if attention_mask.ndim != 2:
        raise ValueError(
            "attention_mask must have shape (batch, n) like a tokenizer's output, got "
            f"shape {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != torch.bool:
        bad = (attention_mask != 0) & (attention_mask != 1)
        if bad.any():
            raise ValueError(
                "attention_mask must contain only 0 (pad) and 1 (token), found "
                f"{attention_mask[bad].unique().tolist()}"
            )
    return attention_mask.bool()[:, None, None, :]


# --- multi-head attention -------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention (多头注意力) with learned projections ``Q = X W_Q``,
    ``K = C W_K``, ``V = C W_V``.

    ``forward(x)`` is self-attention (the keys and values come from ``x`` itself);
    ``forward(x, context)`` is cross-attention (交叉注意力): queries from ``x`` (e.g.
    the decoder), keys/values from ``context`` (e.g. the encoder's output). The
    ``d_model`` features are split into ``n_heads`` heads of
    ``d_k = d_model // n_heads`` features each; every head attends on its own, the heads
    are concatenated and mixed by the output projection ``W_O``. Masks follow
    :func:`scaled_dot_product_attention` (``True`` = may attend). ``rope=(cos, sin)``
    rotates queries and keys (see :func:`book_utils.positions.apply_rope`). Taught in
    chapter 2; the weights can be copied from ``torch.nn.MultiheadAttention`` with
    :func:`copy_from_torch_mha`.
    """

    def __init__(
        self, d_model: int, n_heads: int, *, bias: bool = True, dropout: float = 0.0
    ):
        super().__init__()
        if (
            not isinstance(d_model, int)
            or not isinstance(n_heads, int)
            or d_model < 1
            or n_heads < 1
        ):
            raise ValueError(
                f"d_model and n_heads must be positive ints, got {d_model!r} and "
                f"{n_heads!r}"
            )
        if d_model % n_heads:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}; each head "
                "gets d_model // n_heads features"
            )
        self.d_model, self.n_heads, self.d_k, self.dropout = (
            d_model,
            n_heads,
            d_model // n_heads,
            dropout,
        )
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    # (B, n, d_model) -> (B, h, n, d_k)
    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, self.d_k)).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``(B, n_q, d_model)``, ``context``: ``(B, n_k, d_model)`` or None;
        returns ``(out, weights)`` with ``weights`` of shape
        ``(B, n_heads, n_q, n_k)``."""
        context = x if context is None else context
        for name, t in (("x", x), ("context", context)):
            if (
                not isinstance(t, torch.Tensor)
                or t.ndim != 3
                or t.shape[-1] != self.d_model
            ):
                shape = (
                    tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                )
                raise ValueError(
                    f"{name} must have shape (batch, n, d_model={self.d_model}), got "
                    f"{shape}"
                )
        if context.shape[0] != x.shape[0]:
            raise ValueError(
                f"x and context have different batch sizes: {x.shape[0]} vs "
                f"{context.shape[0]}"
            )
        q, k, v = (
            self._split(self.q_proj(x)),
            self._split(self.k_proj(context)),
            self._split(self.v_proj(context)),
        )
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        p = self.dropout if self.training else 0.0
        out, weights = scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=p
        )
        # concatenate the heads: (B, n_q, d_model)
        out = out.transpose(1, 2).flatten(-2)
        return self.out_proj(out), weights


@torch.no_grad()
def copy_from_torch_mha(
    ours: MultiHeadAttention, theirs: nn.MultiheadAttention
) -> MultiHeadAttention:
    """Copy the weights of a ``torch.nn.MultiheadAttention`` into ours (to check both
    compute the same).

    PyTorch stacks ``W_Q, W_K, W_V`` into one ``in_proj_weight`` of shape ``(3 d, d)``.
    Taught in chapter 2.
    """
    d = ours.d_model
    if theirs.embed_dim != d or theirs.num_heads != ours.n_heads:
        raise ValueError(
            f"shape mismatch: torch MHA has embed_dim={theirs.embed_dim}, "
            f"num_heads={theirs.num_heads}; ours has d_model={d}, "
            f"n_heads={ours.n_heads}"
        )
    if theirs.in_proj_weight is None:
        raise ValueError(
            "torch MHA with kdim/vdim != embed_dim keeps separate weights; not "
            "supported here"
        )
    for i, lin in enumerate((ours.q_proj, ours.k_proj, ours.v_proj)):
        lin.weight.copy_(theirs.in_proj_weight[i * d : (i + 1) * d])
        if lin.bias is not None:
            lin.bias.copy_(theirs.in_proj_bias[i * d : (i + 1) * d])
    ours.out_proj.weight.copy_(theirs.out_proj.weight)
    if ours.out_proj.bias is not None:
        ours.out_proj.bias.copy_(theirs.out_proj.bias)
    return ours


# --- cost -----------------------------------------------------------------------------


def _allocated_bytes(fn) -> int:
    """Bytes allocated on the CPU while ``fn()`` runs, from the PyTorch profiler's
    memory events."""
    from torch.profiler import ProfilerActivity, profile

    # silence kineto's "profiler_start/stop" lines on stderr
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return int(
        sum(
            e.self_cpu_memory_usage
            for e in prof.events()
            if e.self_cpu_memory_usage > 0
        )
    )


def attention_cost(
    lengths: list[int],
    *,
    d_k: int = 64,
    n_heads: int = 4,
    batch: int = 1,
    repeats: int = 5,
    implementations: tuple[str, ...] = ("naive", "sdpa"),
    seed: int = 0,
    threads: int | None = 1,
) -> list[dict]:
    """Time and memory of one attention call as the sequence length ``n`` grows.

    For each ``n`` and implementation (``"naive"``:
    :func:`scaled_dot_product_attention`, which builds the full ``n × n`` score matrix;
    ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``, which on CPU and
    GPU can use a fused, tiled kernel in the spirit of FlashAttention that never stores
    it) returns a dict with the median wall time in seconds over ``repeats`` runs (after
    one warm-up) and the bytes allocated during one call (``torch.profiler`` with
    ``profile_memory=True``). Self-attention on random ``(batch, n_heads, n, d_k)``
    inputs, no mask, no gradients. ``threads`` (default 1) sets PyTorch's intra-op
    threads for the measurement and restores them afterwards: on a shared or busy
    machine a multi-threaded kernel waits for descheduled threads, which hides the
    scaling we want to see; ``None`` keeps PyTorch's setting. Taught in chapter 2, "The
    cost of attention".
    """
    if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(
            f"lengths must be a non-empty list of positive ints, got {lengths!r}"
        )
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    known = {
        "naive": lambda q: scaled_dot_product_attention(q, q, q)[0],
        "sdpa": lambda q: F.scaled_dot_product_attention(q, q, q),
    }
    unknown = set(implementations) - known.keys()
    if unknown:
        raise ValueError(
            f"unknown implementations {sorted(unknown)}; choose among {sorted(known)}"
        )
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    gen = torch.Generator().manual_seed(seed)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows = _measure(
            lengths, known, implementations, gen, d_k, n_heads, batch, repeats
        )
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def _measure(
    lengths, known, implementations, gen, d_k, n_heads, batch, repeats
) -> list[dict]:
    rows = []
    with torch.no_grad():
        for n in lengths:
            q = torch.randn(batch, n_heads, n, d_k, generator=gen)
            for name in implementations:
                fn = known[name]
                fn(q)  # warm-up
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    fn(q)
                    times.append(time.perf_counter() - start)
                rows.append(
                    {
                        "n": n,
                        "implementation": name,
                        "seconds": statistics.median(times),
                        "bytes": _allocated_bytes(lambda: fn(q)),
                    }
                )
    return rows
