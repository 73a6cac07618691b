"""The KV cache (键值缓存) explained: a toy attention head that appends to its cache,
and the memory a full cache takes.

Taught in chapter 5.1, book/05_deployment/01_decoding.ipynb ("The KV cache").
"""

from __future__ import annotations

import torch


def kv_cache_bytes(
    config, context_length: int, batch_size: int = 1, bytes_per_value: int = 4
) -> int:
    """Memory of a full KV cache: 2 (K and V) · layers · batch · kv_heads · context ·
    head_dim · bytes."""
    head_dim = (
        getattr(config, "head_dim", None)
        or config.hidden_size // config.num_attention_heads
    )
    kv_heads = (
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    )
    return (
        2
        * config.num_hidden_layers
        * batch_size
        * kv_heads
        * context_length
        * head_dim
        * bytes_per_value
    )


# --- a toy attention layer with a cache, for the explanation --------------------------


class ToyCachedAttention(torch.nn.Module):
    """One causal self-attention head with a KV cache, to show the shapes (chapter 5).

    ``forward(x, cache)``: ``x`` is ``(B, n_new, d)``; the new keys/values
    ``(B, n_new, d)`` are appended to ``cache = (K, V)`` of shape ``(B, n_past, d)``;
    the queries of the new positions attend over all ``n_past + n_new`` keys (causally).
    Returns ``(out (B, n_new, d), (K, V) of (B, n_past + n_new, d))``.
    """

    def __init__(self, d: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w_q, self.w_k, self.w_v = (
            torch.nn.Parameter(torch.randn(d, d, generator=gen) / d**0.5)
            for _ in range(3)
        )

    def forward(
        self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None
    ):
        from book_utils.attention import causal_mask, scaled_dot_product_attention

        q, k, v = x @ self.w_q, x @ self.w_k, x @ self.w_v
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=1), torch.cat([cache[1], v], dim=1)
        n_new, n_all = q.shape[1], k.shape[1]
        # query i (absolute position n_all - n_new + i) may see keys 0 .. its own
        # position
        mask = causal_mask(n_all, n_all, device=x.device)[n_all - n_new :]
        out, _ = scaled_dot_product_attention(q, k, v, mask)
        return out, (k, v)
