"""The run's configs, nanoGPT style: :class:`ModelConfig` (with its parameter-count and
FLOP formulas), :class:`TrainConfig`, the named sizes :func:`preset` reads from
:data:`book_utils.sizes.PRESETS`, and the learning-rate schedule :func:`lr_at`.

Chapter 3.2, book/03_pretraining/02_causal_lm.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from book_utils.checks import positive_int
from book_utils.sizes import PRESETS, for_profile


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-style decoder (RMSNorm, rotary positions, SwiGLU MLP, no
    biases); chapter 3.

    ``n_embd`` is the model width d, ``n_head`` the query heads (head size d / n_head),
    ``n_kv_head`` the key/value heads (fewer than ``n_head`` = grouped-query attention),
    ``ffn_size`` the SwiGLU hidden size f (default: 8d/3 rounded up to a multiple of 32,
    Llama's rule), ``block_size`` the context length T.
    """

    vocab_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256
    n_kv_head: int | None = None
    ffn_size: int | None = None
    tie_embeddings: bool = True
    rope_theta: float = 10_000.0

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size"):
            positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                "(head size = n_embd / n_head)"
            )
        if self.n_kv_head is not None and (
            positive_int("n_kv_head", self.n_kv_head) > self.n_head
            or self.n_head % self.n_kv_head
        ):
            raise ValueError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}"
            )
        if self.ffn_size is not None:
            positive_int("ffn_size", self.ffn_size)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ffn(self) -> int:
        """SwiGLU hidden size f: ``ffn_size`` or 8d/3 rounded up to a multiple of 32."""
        return self.ffn_size or 32 * math.ceil(8 * self.n_embd / 3 / 32)

    def to_llama(
        self,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ):
        """The ``transformers.LlamaConfig`` of this shape (``LlamaForCausalLM(config)``
        builds the model)."""
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.n_embd,
            intermediate_size=self.ffn,
            num_hidden_layers=self.n_layer,
            num_attention_heads=self.n_head,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.block_size,
            rms_norm_eps=1e-5,
            tie_word_embeddings=self.tie_embeddings,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": float(self.rope_theta),
            },
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )

    def n_params(self) -> int:
        """Parameter count from the shape alone (chapter 3 derives it term by term):

        N = V·d·(1 or 2: tied or separate LM head)
        + L·(2d² + 2·d·(d·n_kv/n_head) + 3·d·f + 2d) + d,
        i.e. embeddings, then per layer the Q and O projections, the K and V
        projections, the three SwiGLU matrices and two RMSNorm weight vectors, then the
        final RMSNorm.
        """
        d, f, L, V = self.n_embd, self.ffn, self.n_layer, self.vocab_size
        d_kv = self.head_dim * self.kv_heads
        per_layer = 2 * d * d + 2 * d * d_kv + 3 * d * f + 2 * d
        return V * d * (1 if self.tie_embeddings else 2) + L * per_layer + d

    def matmul_params(self) -> int:
        """Weights used in a matrix multiplication per token: all but the norms and the
        embedding lookup (a row read, no arithmetic), plus the LM head (V·d, counted
        even when tied to the embedding)."""
        d, f, L, V = self.n_embd, self.ffn, self.n_layer, self.vocab_size
        d_kv = self.head_dim * self.kv_heads
        return L * (2 * d * d + 2 * d * d_kv + 3 * d * f) + V * d

    def train_flops_per_token(self, attention: bool = True) -> int:
        """Training FLOPs per token: 6·N_matmul (2 forward + 4 backward per weight,
        Kaplan et al. 2020), plus 6·L·T·d for the attention scores and their weighted
        sum with a causal mask (half of 12·L·T·d)."""
        flops = 6 * self.matmul_params()
        if attention:
            flops += 6 * self.n_layer * self.block_size * self.n_embd
        return flops


@dataclass(frozen=True)
class TrainConfig:
    """How to train: steps, global batch (in blocks), AdamW, schedule, clipping,
    evaluation (chapter 3).

    ``batch_size`` is the *global* batch: with W processes each one takes
    ``batch_size / W`` blocks of every step's batch, so the run computes the same thing
    on 1 or W processes.
    """

    max_steps: int
    batch_size: int
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_steps: int | None = None  # cosine decay ends here (default: max_steps)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_blocks: int = 64
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        for name in (
            "max_steps",
            "batch_size",
            "eval_every",
            "eval_blocks",
            "checkpoint_every",
        ):
            positive_int(name, getattr(self, name))
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(
                f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}"
            )
        if (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or self.warmup_steps < 0
        ):
            raise ValueError(
                f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}"
            )
        if self.grad_clip <= 0:
            raise ValueError(
                "grad_clip must be > 0 (the maximum gradient norm), "
                f"got {self.grad_clip}"
            )

    @property
    def total_decay_steps(self) -> int:
        return self.decay_steps or self.max_steps


def preset(
    name: str, profile: str, vocab_size: int, **overrides
) -> tuple[ModelConfig, TrainConfig]:
    """``(ModelConfig, TrainConfig)`` of preset ``name`` for ``profile`` (the sizes in
    :data:`book_utils.sizes.PRESETS`); ``overrides`` replace fields of either."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    spec = for_profile(PRESETS[name], profile)
    model_keys = {f.name for f in fields(ModelConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - model_keys - train_keys
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}")
    model_overrides = {k: v for k, v in overrides.items() if k in model_keys}
    train_overrides = {k: v for k, v in overrides.items() if k in train_keys}
    model = ModelConfig(vocab_size=vocab_size, **{**spec["model"], **model_overrides})
    train_cfg = TrainConfig(**{**spec["train"], **train_overrides})
    return model, train_cfg


# --- learning-rate schedule -----------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``lr`` over
    ``warmup_steps``, then a half cosine from ``lr`` down to ``min_lr`` at
    ``decay_steps``, then ``min_lr`` (chapter 3).

    lr(s) = lr·(s+1)/W for s < W;
    min_lr + ½(1 + cos(π·(s−W)/(S−W)))·(lr − min_lr) for W ≤ s ≤ S.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay = cfg.total_decay_steps
    if step >= decay:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (
        cfg.lr - cfg.min_lr
    )
