"""Our own Llama in one readable file (nanoGPT-style): the decoder of SmolLM2 and Llama.

Its pieces are the ones chapter 3.2 describes: RMSNorm, rotary position embeddings,
grouped-query attention, the SwiGLU MLP and an LM head tied to the embedding; chapter
5.1 shows its KV cache. The modules carry the names of ``transformers``'
``LlamaForCausalLM`` (``model.layers.0.self_attn.q_proj``, ...), so a Hugging Face
checkpoint loads without renaming: :func:`from_hf` copies SmolLM2-135M's real weights
in, and chapter 5.1 checks that its logits and greedy tokens are ``LlamaForCausalLM``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from book_utils.positions import apply_rope, rope_cos_sin


@dataclass
class LlamaConfig:
    """The few numbers that define a Llama (SmolLM2-135M: 49,152 / 576 / 30 / 9 / 3 /
    1,536)."""

    vocab_size: int = 49_152
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    hidden_dim: int = 1_536
    norm_eps: float = 1e-5
    rope_theta: float = 100_000.0
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"dim ({self.dim}) must split into n_heads ({self.n_heads}) heads "
                f"and n_heads into n_kv_heads ({self.n_kv_heads}) groups"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight: LayerNorm without the mean and the bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()  # the mean of squares in fp32, as Llama does
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class KVCache:
    """Keys and values of the tokens seen so far, per layer: a new token's query attends
    to them without recomputing them (chapter 5.1)."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return 0 if not self.keys else self.keys[0].shape[2]

    def update(self, layer: int, k, v):
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]


class Attention(nn.Module):
    """Grouped-query attention: n_heads query heads share n_kv_heads key/value heads."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0):
        b, t, _ = x.shape
        cfg, hd = self.cfg, self.cfg.head_dim
        q = self.q_proj(x).view(b, t, cfg.n_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        groups = cfg.n_heads // cfg.n_kv_heads  # each key/value head serves a group
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        causal = mask is None and t > 1  # the fast path: no mask tensor at all
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) ⊙ up(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, blocks, final norm: ``model`` in a Hugging Face Llama checkpoint."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Llama(nn.Module):
    """A Llama language model: ``Llama(cfg)(ids)`` gives next-token logits."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:  # the output matrix is the embedding matrix
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids, cache: KVCache | None = None):
        """Logits (batch, time, vocab) for token ``ids`` (batch, time); with ``cache``
        the ids continue the cached tokens, whose keys and values are reused."""
        past = len(cache) if cache is not None else 0
        t = ids.shape[1]
        positions = torch.arange(past, past + t, device=ids.device)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        cos, sin = cos.to(ids.device), sin.to(ids.device)
        mask = None  # a prompt: causal attention; one new token: it sees every key
        if past and t > 1:  # new tokens after cached ones: each sees its own past
            keys = torch.arange(past + t, device=ids.device)
            mask = keys[None, :] <= positions[:, None]
        x = self.model.embed_tokens(ids)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, mask, cache, i)
        return self.lm_head(self.model.norm(x))

    @torch.no_grad()
    def generate(
        self,
        ids,
        max_new_tokens: int,
        eos_token_id: int | None = None,
        use_cache: bool = True,
    ):
        """Greedy decoding. With the KV cache the prompt runs once, then one token at a
        time; without it every step runs the whole sequence again (chapter 5.1 times
        both). Returns the prompt followed by the new tokens (batch of one)."""
        if ids.shape[0] != 1:
            raise ValueError(
                f"generate takes one sequence, got a batch of {ids.shape[0]}"
            )
        cache = KVCache() if use_cache else None
        logits = self(ids, cache)
        out = ids
        for _ in range(max_new_tokens):
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            out = torch.cat([out, token], dim=1)
            if eos_token_id is not None and token.item() == eos_token_id:
                break
            logits = self(token, cache) if use_cache else self(out)
        return out


def config_from_hf(hf_config) -> LlamaConfig:
    """Our config from a ``transformers`` ``LlamaConfig``."""
    head_dim = getattr(hf_config, "head_dim", None)
    if head_dim not in (None, hf_config.hidden_size // hf_config.num_attention_heads):
        raise ValueError(f"head_dim {head_dim} != hidden_size / num_attention_heads")
    rope = getattr(hf_config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10_000.0))
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only plain rotary embeddings, not {rope['rope_type']!r}")
    return LlamaConfig(
        vocab_size=hf_config.vocab_size,
        dim=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        n_heads=hf_config.num_attention_heads,
        n_kv_heads=hf_config.num_key_value_heads,
        hidden_dim=hf_config.intermediate_size,
        norm_eps=hf_config.rms_norm_eps,
        rope_theta=float(theta),
        tie_embeddings=bool(hf_config.tie_word_embeddings),
    )


def from_hf(hf_model) -> Llama:
    """Our :class:`Llama` with the weights of a ``transformers`` ``LlamaForCausalLM``
    (same module names, so the state dict loads as it is), in eval mode."""
    model = Llama(config_from_hf(hf_model.config))
    state = hf_model.state_dict()
    if model.cfg.tie_embeddings:  # lm_head.weight is the embedding; load it once
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    result = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.cfg.tie_embeddings else set()
    if result.unexpected_keys or set(result.missing_keys) - tied:
        raise ValueError(
            f"weights do not fit: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.to(next(hf_model.parameters()).dtype).eval()
