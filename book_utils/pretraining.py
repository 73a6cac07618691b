"""Causal language model pretraining (预训练) of the book's small Llama-style base model (taught in chapter 3).

A causal language model (因果语言模型) learns p(x_t | x_<t) by minimising the next-token cross-entropy on
raw text. This module holds everything chapter 3, "Causal-LM pretraining", needs beyond a few lines:

- configs as small frozen dataclasses, nanoGPT style: :class:`ModelConfig` (with its parameter-count and
  FLOP formulas) and :class:`TrainConfig`; :data:`PRESETS` names the sizes the book uses per profile;
- data with 🤗 ``datasets``: :func:`build_lm_datasets` tokenizes whole documents, concatenates and chunks
  them into fixed blocks with batched ``map``, one split at a time, so no validation text reaches training;
- :func:`train`: AdamW, warmup + cosine learning-rate schedule (学习率调度), gradient clipping (梯度裁剪),
  periodic evaluation and samples, resumable safetensors checkpoints (检查点) written atomically, and data
  parallelism (数据并行) with ``torch.distributed`` when launched by ``torchrun`` or ``accelerate launch``;
- :func:`score_text` and :func:`bits_per_char`: held-out perplexity (困惑度) in bits per character, the unit
  that compares models with different tokenizers (chapter 1's n-gram, a character model, SmolLM2);
- :func:`load_base_model`: the trained base model from the artifact cache (chapters 4c and 5 use it);
- a command line, ``python -m book_utils.pretraining --help``, that runs unchanged under
  ``torchrun --nproc_per_node 2 -m book_utils.pretraining`` (gloo on CPU, nccl on GPUs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

#: Cache name of the base model artifact: ``artifact_dir(BASE_MODEL_ARTIFACT, profile)`` holds ``model/``
#: (the finished model and tokenizer, ``from_pretrained``-loadable) and the resumable training state of each
#: run in ``<run>-checkpoint-<config hash>/`` (:func:`run_checkpoint_dir`).
BASE_MODEL_ARTIFACT = "base-model"
#: Written by :func:`save_checkpoint`; a checkpoint from another format version is refused, not misread.
CHECKPOINT_FORMAT = 1
#: A prompt in the corpus's own format (a speaker's name line), used for the samples printed while training.
SAMPLE_PROMPT = "\n\nJuliet.\n"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt, or written for another configuration).

    The message says which folder and what to do (usually: delete it to train from scratch).
    """


# --- configs ----------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-style decoder (RMSNorm, rotary positions, SwiGLU MLP, no biases); chapter 3.

    ``n_embd`` is the model width d, ``n_head`` the query heads (head size d / n_head), ``n_kv_head`` the
    key/value heads (fewer than ``n_head`` = grouped-query attention), ``ffn_size`` the SwiGLU hidden size f
    (default: 8d/3 rounded up to a multiple of 32, Llama's rule), ``block_size`` the context length T.
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
            _check_positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} (head size = n_embd / n_head)"
            )
        if self.n_kv_head is not None and (
            _check_positive_int("n_kv_head", self.n_kv_head) > self.n_head or self.n_head % self.n_kv_head
        ):
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if self.ffn_size is not None:
            _check_positive_int("ffn_size", self.ffn_size)

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
        self, *, bos_token_id: int | None = None, eos_token_id: int | None = None, pad_token_id: int | None = None
    ):
        """The ``transformers.LlamaConfig`` of this shape (``LlamaForCausalLM(config)`` builds the model)."""
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
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)},
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )

    def n_params(self) -> int:
        """Parameter count from the shape alone (chapter 3 derives it term by term):

        N = V·d·(1 or 2: tied or separate LM head) + L·(2d² + 2·d·(d·n_kv/n_head) + 3·d·f + 2d) + d,
        i.e. embeddings, then per layer the Q and O projections, the K and V projections, the three SwiGLU
        matrices and two RMSNorm weight vectors, then the final RMSNorm.
        """
        d, f, L, V = self.n_embd, self.ffn, self.n_layer, self.vocab_size
        d_kv = self.head_dim * self.kv_heads
        per_layer = 2 * d * d + 2 * d * d_kv + 3 * d * f + 2 * d
        return V * d * (1 if self.tie_embeddings else 2) + L * per_layer + d

    def matmul_params(self) -> int:
        """Weights used in a matrix multiplication per token: all but the norms and the embedding lookup
        (a row read, no arithmetic), plus the LM head (V·d, counted even when tied to the embedding)."""
        d, f, L, V = self.n_embd, self.ffn, self.n_layer, self.vocab_size
        d_kv = self.head_dim * self.kv_heads
        return L * (2 * d * d + 2 * d * d_kv + 3 * d * f) + V * d

    def train_flops_per_token(self, attention: bool = True) -> int:
        """Training FLOPs per token: 6·N_matmul (2 forward + 4 backward per weight, Kaplan et al. 2020),
        plus 6·L·T·d for the attention scores and their weighted sum with a causal mask (half of 12·L·T·d)."""
        flops = 6 * self.matmul_params()
        if attention:
            flops += 6 * self.n_layer * self.block_size * self.n_embd
        return flops


@dataclass(frozen=True)
class TrainConfig:
    """How to train: steps, global batch (in blocks), AdamW, schedule, clipping, evaluation (chapter 3).

    ``batch_size`` is the *global* batch: with W processes each one takes ``batch_size / W`` blocks of
    every step's batch, so the run computes the same thing on 1 or W processes.
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
        for name in ("max_steps", "batch_size", "eval_every", "eval_blocks", "checkpoint_every"):
            _check_positive_int(name, getattr(self, name))
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 (the maximum gradient norm), got {self.grad_clip}")

    @property
    def total_decay_steps(self) -> int:
        return self.decay_steps or self.max_steps


#: The sizes the book trains, per profile. ``base``: the book's base model (its vocabulary comes from the
#: tokenizer); ``nanogpt-char``: nanoGPT's CPU "baby GPT" setting on characters (full = the published
#: setting); ``tiny``: a quick run to try the command line and its launchers.
# fmt: off
PRESETS: dict[str, dict[str, dict]] = {
    "base": {
        "ci": {"model": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
               "train": dict(max_steps=40, batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=5,
                             eval_every=20, eval_blocks=8, checkpoint_every=20)},
        "full": {"model": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
                 "train": dict(max_steps=1000, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                               eval_every=125, eval_blocks=64, checkpoint_every=125)},
    },
    "nanogpt-char": {
        "ci": {"model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
               "train": dict(max_steps=40, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=10, beta2=0.99,
                             eval_every=20, eval_blocks=16, checkpoint_every=40)},
        "full": {"model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
                 "train": dict(max_steps=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99,
                               eval_every=250, eval_blocks=240, checkpoint_every=500)},
    },
    "tiny": {
        "ci": {"model": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
               "train": dict(max_steps=10, batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=2,
                             eval_every=5, eval_blocks=8, checkpoint_every=10)},
        "full": {"model": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
                 "train": dict(max_steps=40, batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=5,
                               eval_every=10, eval_blocks=16, checkpoint_every=40)},
    },
}
# fmt: on


def preset(name: str, profile: str, vocab_size: int, **overrides) -> tuple[ModelConfig, TrainConfig]:
    """``(ModelConfig, TrainConfig)`` of preset ``name`` for ``profile``; ``overrides`` replace fields of either."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    if profile not in ("ci", "full"):
        raise ValueError(f"profile must be 'ci' or 'full', got {profile!r}")
    spec = PRESETS[name][profile]
    model_keys = {f.name for f in fields(ModelConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - model_keys - train_keys
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}")
    model = ModelConfig(
        vocab_size=vocab_size, **{**spec["model"], **{k: v for k, v in overrides.items() if k in model_keys}}
    )
    train_cfg = TrainConfig(**{**spec["train"], **{k: v for k, v in overrides.items() if k in train_keys}})
    return model, train_cfg


# --- learning-rate schedule -------------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``lr`` over ``warmup_steps``,
    then a half cosine from ``lr`` down to ``min_lr`` at ``decay_steps``, then ``min_lr`` (chapter 3).

    lr(s) = lr·(s+1)/W for s < W;  min_lr + ½(1 + cos(π·(s−W)/(S−W)))·(lr − min_lr) for W ≤ s ≤ S.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay = cfg.total_decay_steps
    if step >= decay:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# --- data -------------------------------------------------------------------------------------------------


def documents_dataset(splits: Mapping[str, Mapping[str, str]]):
    """A ``DatasetDict`` with one row per document (``title``, ``text``) for each split (chapter 3).

    ``splits`` is ``{"train": {title: text}, "validation": {...}, ...}`` as returned by
    :func:`book_utils.assets.shakespeare_splits`: whole plays, so a play is in exactly one split.
    """
    from datasets import Dataset, DatasetDict

    if not isinstance(splits, Mapping) or "train" not in splits:
        raise ValueError(
            "no training corpus: pass {'train': {title: text}, 'validation': {...}}, e.g. "
            "book_utils.assets.shakespeare_splits() (install the corpus with: python -m book_utils.assets install)"
        )
    out = {}
    for split, works in splits.items():
        texts = {title: text for title, text in dict(works).items() if isinstance(text, str) and text.strip()}
        if not texts:
            raise ValueError(
                f"the {split!r} split has no text (0 non-empty documents): the corpus is missing or empty. "
                "Install it with `python -m book_utils.assets install`, or pass non-empty documents."
            )
        out[split] = Dataset.from_dict({"title": sorted(texts), "text": [texts[t] for t in sorted(texts)]})
    titles = [set(ds["title"]) for ds in out.values()]
    shared = set.intersection(*titles) if len(titles) > 1 else set()
    if shared:
        raise ValueError(
            f"documents {sorted(shared)} appear in more than one split: split by document so nothing leaks"
        )
    return DatasetDict(out)


def build_lm_datasets(splits, tokenizer, block_size: int):
    """Tokenize → concatenate → chunk into ``block_size``-token blocks, per split, with batched ``map``.

    Each document ends with the tokenizer's end-of-text token, then a split's documents are concatenated
    and cut into fixed blocks (the tail shorter than a block is dropped), exactly the ``group_texts`` recipe
    of 🤗's ``run_clm``. Splits are processed separately, so a block never mixes training and held-out text.
    Returns a ``DatasetDict`` with one ``input_ids`` column (torch format). Chapter 3.

    Raises ``ValueError`` for an empty corpus or when a split holds fewer tokens than one block.
    """
    from itertools import chain

    _check_positive_int("block_size", block_size)
    docs = splits if hasattr(splits, "column_names") else documents_dataset(splits)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: documents need an end-of-text token between them")

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [doc + [eos] for doc in ids]}

    def group(batch):
        joined = list(chain.from_iterable(batch["input_ids"]))
        usable = len(joined) // block_size * block_size
        return {"input_ids": [joined[i : i + block_size] for i in range(0, usable, block_size)]}

    tokenized = docs.map(tokenize, batched=True, remove_columns=docs["train"].column_names, desc="tokenize")
    for split, ds in tokenized.items():
        n_tokens = sum(len(ids) for ids in ds["input_ids"])
        if n_tokens < block_size:
            raise ValueError(
                f"the {split!r} split has only {n_tokens} tokens, fewer than one block of block_size={block_size}: "
                "use a smaller block_size (or more text)"
            )
    # One map batch holds every document of a split, so only the split's last partial block is dropped.
    blocks = tokenized.map(group, batched=True, batch_size=100_000, desc="chunk")
    return blocks.with_format("torch")


def batch_indices(
    n_blocks: int, batch_size: int, step: int, seed: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """The block indices of optimizer step ``step`` for process ``rank`` of ``world_size`` (chapter 3).

    Every epoch is a fresh permutation of the blocks drawn from ``seed`` and the epoch number; step ``s``
    takes the next ``batch_size`` of them (the global batch) and process ``rank`` keeps every
    ``world_size``-th one. The union over processes is the single-process batch, and the order depends on
    nothing but ``(seed, step)``, so an interrupted run resumes on exactly the batches it would have seen.
    """
    if batch_size > n_blocks:
        raise ValueError(
            f"batch_size={batch_size} blocks but the training split has only {n_blocks}: "
            "lower batch_size or block_size (or use more text)"
        )
    if batch_size % world_size:
        raise ValueError(
            f"the global batch_size={batch_size} must be divisible by the number of processes {world_size}"
        )
    per_epoch = n_blocks // batch_size
    epoch, i = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_blocks, generator=generator)
    return order[i * batch_size : (i + 1) * batch_size][rank::world_size]


# --- model ------------------------------------------------------------------------------------------------


def build_model(cfg: ModelConfig, tokenizer=None, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` of shape ``cfg`` (same seed, same weights); chapter 3."""
    from transformers import LlamaForCausalLM

    ids = {}
    if tokenizer is not None:
        ids = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg.to_llama(**ids))


def count_parameters(model) -> int:
    """Number of distinct parameters (a tied embedding/LM-head matrix counted once)."""
    return sum(p.numel() for p in model.parameters())


def _optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only, not on norm weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _scheduler(optimizer, cfg: TrainConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg) / cfg.lr)


# --- checkpoints ------------------------------------------------------------------------------------------


def save_checkpoint(path, model, optimizer, scheduler, step: int, history: dict, train_cfg: TrainConfig) -> None:
    """Save everything a resumed run needs into folder ``path``, atomically (chapter 3).

    ``model.safetensors`` + ``config.json`` (``save_pretrained``), ``optimizer.pt`` (AdamW moments, plain
    tensors: ``torch.load(weights_only=True)`` reads it), ``state.json`` (step, scheduler, history, config).
    The folder is built beside ``path`` and renamed into place only when complete (``cache.atomic_dir``):
    an interrupted save leaves the previous checkpoint intact and nothing half-written under ``path``.
    """
    from book_utils.cache import atomic_dir

    state = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "scheduler": scheduler.state_dict(),
        "history": history,
        "train_config": asdict(train_cfg),
    }
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "optimizer.pt").write_bytes(buffer.getvalue())
        (tmp / "state.json").write_text(json.dumps(state))


def load_checkpoint(path, model, optimizer=None, scheduler=None, train_cfg: TrainConfig | None = None) -> dict | None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (and optimizer, scheduler).

    Returns the saved state (``step``, ``history``), or ``None`` when there is no finished checkpoint: a
    folder without the completion marker is never loaded. Raises :class:`CheckpointError` when the files are
    corrupt or were written for another model or training configuration.
    """
    from safetensors.torch import load_file

    from book_utils.cache import is_complete

    path = Path(path)
    if not path.exists():
        return None
    if not is_complete(path):
        warnings.warn(
            f"ignoring {path}: it has no completion marker (an interrupted write); training starts from scratch"
        )
        return None
    advice = f"delete the folder to train from scratch:  rm -r '{path}'"
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(path / "model.safetensors")
        optim_state = torch.load(path / "optimizer.pt", weights_only=True) if optimizer is not None else None
    except Exception as error:  # noqa: BLE001 - any unreadable file means the same thing to the user
        raise CheckpointError(
            f"the checkpoint in {path} is corrupt or incomplete ({type(error).__name__}: {error}); {advice}"
        ) from error
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"the checkpoint in {path} has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}; {advice}"
        )
    if train_cfg is not None and state.get("train_config") != json.loads(json.dumps(asdict(train_cfg))):
        raise CheckpointError(
            f"the checkpoint in {path} was written for another training configuration "
            f"({state.get('train_config')} vs {asdict(train_cfg)}); use another folder or {advice}"
        )
    expected = model.state_dict()
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = set(expected) - set(weights) - tied
    mismatched = [k for k, v in weights.items() if k not in expected or expected[k].shape != v.shape]
    if missing or mismatched:
        raise CheckpointError(
            f"the checkpoint in {path} holds another model shape (missing {sorted(missing)[:3]}, "
            f"different {mismatched[:3]}); use another folder or {advice}"
        )
    model.load_state_dict(weights, strict=False)
    try:
        if optimizer is not None:
            optimizer.load_state_dict(optim_state)
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"the optimizer state in {path} does not fit this model ({error}); {advice}") from error
    return state


# --- evaluation -------------------------------------------------------------------------------------------


def bits_per_char(total_nll_nats: float, n_chars: int) -> float:
    """Bits per character from a *total* negative log-likelihood in nats over a text of ``n_chars`` characters.

    BPC = Σ_t −ln p(x_t | x_<t) / (ln 2 · n_chars). The sum runs over the model's tokens, whatever they are
    (characters, BPE pieces), so the number is comparable across tokenizers: each model pays, in bits, for
    encoding the same characters (chapter 3; chapter 1 uses the per-character form NLL/ln 2).
    """
    if isinstance(n_chars, bool) or not isinstance(n_chars, int) or n_chars < 1:
        raise ValueError(f"n_chars must be a positive int (the length of the scored text), got {n_chars!r}")
    if not math.isfinite(total_nll_nats) or total_nll_nats < 0:
        raise ValueError(f"a total negative log-likelihood is a finite number >= 0 nats, got {total_nll_nats!r}")
    return total_nll_nats / (math.log(2) * n_chars)


@dataclass(frozen=True)
class TextScore:
    """How well a model predicts a text: total NLL (nats) over ``n_tokens`` tokens covering ``n_chars`` characters."""

    nll: float
    n_tokens: int
    n_chars: int

    @property
    def loss(self) -> float:
        """Mean NLL per token in nats: the cross-entropy loss training reports."""
        return self.nll / self.n_tokens

    @property
    def perplexity(self) -> float:
        """Per-token perplexity exp(loss): depends on the tokenizer, so compare models with :attr:`bpc`."""
        return math.exp(self.loss)

    @property
    def bpc(self) -> float:
        return bits_per_char(self.nll, self.n_chars)

    @property
    def chars_per_token(self) -> float:
        return self.n_chars / self.n_tokens

    def __str__(self) -> str:
        return (
            f"loss {self.loss:.4f} nats/token | perplexity {self.perplexity:.2f} | {self.bpc:.4f} bits/char"
            f" | {self.n_tokens:,} tokens, {self.n_chars:,} chars"
        )


@torch.no_grad()
def score_text(
    model,
    tokenizer,
    text: str,
    *,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    start_token_id: int | None = None,
    progress: bool = False,
    desc: str = "score",
) -> TextScore:
    """Total next-token NLL of ``text`` under ``model``: every token predicted exactly once (chapter 3).

    The text is encoded in one piece (its decoding must give the text back, or BPC would not be about the
    same characters) and a start token is put in front so that the first token is predicted too. Windows
    of ``block_size`` tokens (default: the model's context) slide over the sequence by ``stride`` tokens
    (default: ``block_size``, i.e. non-overlapping); each window scores only the tokens no earlier window
    scored, so with ``stride = block_size / 2`` every token after the first window sees at least half a
    context of preceding tokens. Never does a prediction see text after its target.
    """
    from tqdm.auto import tqdm

    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string (the held-out text to score)")
    block_size = block_size or model.config.max_position_embeddings
    stride = stride or block_size
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be between 1 and block_size={block_size}, got {stride}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != text:
        raise ValueError(
            "this tokenizer does not decode the text back to itself, so its tokens do not cover exactly these "
            "characters"
        )
    start = (
        start_token_id
        if start_token_id is not None
        else (tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
    )
    seq = torch.tensor([start] + ids)
    # Window w reads seq[begin : end] and predicts seq[begin + 1 : end + 1]; its last `new` targets are scored.
    windows, scored, begin = [], 0, 0
    while scored < len(seq) - 1:
        end = min(begin + block_size, len(seq) - 1)
        windows.append((begin, end, end - scored))
        scored, begin = end, begin + stride
    full = [w for w in windows if w[1] - w[0] == block_size]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [
        [w] for w in windows if w[1] - w[0] != block_size
    ]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, counted = 0.0, 0
    for group in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x = torch.stack([seq[b : e + 1] for b, e, _ in group]).to(device)
        logits = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        token_nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # (windows, positions)
        for row, (_, _, new) in zip(token_nll, group):
            nll += row[-new:].sum().item()
            counted += new
    model.train(was_training)
    assert counted == len(ids), (counted, len(ids))
    return TextScore(nll=nll, n_tokens=len(ids), n_chars=len(text))


@torch.no_grad()
def _block_loss(model, blocks: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[float, int]:
    """Summed next-token NLL and count over this process's share of ``blocks`` (rows ``rank::world_size``)."""
    device = next(model.parameters()).device
    mine = blocks[rank::world_size]
    total, count = 0.0, 0
    for i in range(0, len(mine), batch_size):
        x = mine[i : i + batch_size].to(device)
        logits = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum").item()
        count += x[:, 1:].numel()
    return total, count


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 60,
    *,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
) -> str:
    """Sample a continuation of ``prompt`` token by token (temperature, top-k) with its own seeded generator,
    so printing samples never changes the training run's random state (chapter 3)."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    x = torch.tensor([ids], device=device)
    block = model.config.max_position_embeddings
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        logits = model(input_ids=x[:, -block:], use_cache=False).logits[0, -1].float().cpu() / temperature
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits[logits < kth] = -float("inf")
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        if token.item() == tokenizer.eos_token_id:
            break
        x = torch.cat([x, token.to(device)[None]], dim=1)
    model.train(was_training)
    return tokenizer.decode(x[0, len(ids) :].tolist(), skip_special_tokens=True)


# --- training ---------------------------------------------------------------------------------------------


def _dist() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_reduce_sum(values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def new_history() -> dict:
    """The record :func:`train` keeps: per step (lr, loss, gradient norm), per evaluation, samples, costs."""
    return {
        "step": [],
        "lr": [],
        "train_loss": [],
        "grad_norm": [],
        "eval_step": [],
        "val_loss": [],
        "samples": [],
        "tokens": 0,
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "world_size": 1,
    }


def train_step(
    net, x, optimizer, scheduler, grad_clip: float, *, autocast=None, scaler=None
):
    """One optimizer step of next-token training on the token blocks ``x``: forward
    (``labels=input_ids``: the model shifts them by one), backward, gradient clipping,
    AdamW step, learning-rate schedule step. ``net`` is the model, or the model wrapped
    in ``DistributedDataParallel``, whose backward also averages the gradients across
    processes. Returns ``(loss, gradient norm before clipping, learning rate)``."""
    autocast = autocast or contextlib.nullcontext()
    scaler = scaler or torch.amp.GradScaler(enabled=False)  # fp16 needs a real one
    with autocast:
        loss = net(input_ids=x, labels=x, use_cache=False).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)  # with scaling off (fp32, bf16): optimizer.step()
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), float(grad_norm), lr


def train(
    model,
    data,
    cfg: TrainConfig,
    *,
    checkpoint_dir=None,
    tokenizer=None,
    sample_prompt: str | None = None,
    sample_tokens: int = 48,
    progress: bool = True,
    desc: str = "pretraining",
    dtype: torch.dtype | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] | None = print,
    stop_after: int | None = None,
) -> dict:
    """Pretrain ``model`` on ``data["train"]`` blocks with next-token cross-entropy; returns the history.

    Each step: a global batch of blocks (:func:`batch_indices`), forward with ``labels=input_ids`` (the model
    shifts them by one), backward, gradient clipping to ``cfg.grad_clip``, AdamW step, schedule step
    (:func:`lr_at`). Every ``eval_every`` steps (and at step 0 and the end) the mean loss on ``eval_blocks``
    validation blocks spread evenly over the validation split is recorded and, with a tokenizer and
    ``sample_prompt``, a sample is generated and logged. Every ``checkpoint_every`` steps a checkpoint is written to
    ``checkpoint_dir`` (atomically); if one is there already, training resumes from it and a finished run
    returns at once. Chapter 3.

    Under ``torch.distributed`` (``torchrun``), the model is wrapped in ``DistributedDataParallel``: each
    process computes the loss on its share of the global batch, gradients are averaged by all-reduce,
    logged losses are all-reduced, and only rank 0 logs and writes checkpoints. ``on_step(step, history)``
    is called after each step (tests use it to interrupt a run). ``stop_after`` ends the loop after that
    many steps of the schedule (no final evaluation or checkpoint): chapter 3 replays the start of a run.
    ``dtype`` bfloat16/float16 turns on autocast (mixed precision) on GPUs; float16 also scales the loss
    (``torch.amp.GradScaler``: fp16 gradients underflow without it; a step whose gradients overflow is
    skipped). The scaler's state is not checkpointed: a resumed fp16 run restarts from its initial scale.
    """
    from tqdm.auto import tqdm

    rank, world = _dist()
    device = next(model.parameters()).device
    blocks, all_val = data["train"]["input_ids"], data["validation"]["input_ids"]
    # a fixed, evenly spread subset of the validation blocks (the first ones would be a play's front matter)
    val_blocks = all_val[torch.linspace(0, len(all_val) - 1, min(cfg.eval_blocks, len(all_val))).long()]
    n_blocks = len(blocks)
    batch_indices(n_blocks, cfg.batch_size, 0, cfg.seed, rank, world)  # validates sizes early
    model.train()
    optimizer = _optimizer(model, cfg)
    scheduler = _scheduler(optimizer, cfg)
    history, start = new_history(), 0
    if checkpoint_dir is not None:
        state = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, cfg)
        if state is not None:
            history, start = state["history"], state["step"]
            if log and rank == 0 and start:
                log(f"resumed from {checkpoint_dir} at step {start}/{cfg.max_steps}")
    history["world_size"] = world
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype in (torch.bfloat16, torch.float16))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def evaluate(step: int) -> None:
        began = time.perf_counter()
        model.eval()
        with autocast:
            total, count = _block_loss(model, val_blocks, 16, rank, world)
        if world > 1:
            total, count = _all_reduce_sum([total, count], device)
        history["eval_step"].append(step)
        history["val_loss"].append(total / count)
        text = None
        if rank == 0 and tokenizer is not None and sample_prompt is not None:
            text = generate(model, tokenizer, sample_prompt, sample_tokens, seed=cfg.seed)
            history["samples"].append([step, text])
        model.train()
        history["eval_seconds"] += time.perf_counter() - began
        if log and rank == 0:
            line = f"step {step:5d} | val loss {total / count:.4f}"
            if history["train_loss"]:
                recent = history["train_loss"][-cfg.eval_every :]
                line += f" | train loss {sum(recent) / len(recent):.4f} (mean of last {len(recent)} steps)"
            log(line + (f"\n    sample: {sample_prompt.strip()!s} {text!r}" if text is not None else ""))

    if start == 0 and not history["eval_step"]:
        evaluate(0)
    bar = tqdm(total=cfg.max_steps, initial=start, desc=desc, disable=not progress or rank != 0, leave=False)
    last = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    # the loop (chapter 3.2 shows it from here)
    for step in range(start, last):
        began = time.perf_counter()
        idx = batch_indices(n_blocks, cfg.batch_size, step, cfg.seed, rank, world)
        x = blocks[idx].to(device)  # this process's share of the global batch
        loss_value, grad_norm, lr = train_step(
            net, x, optimizer, scheduler, cfg.grad_clip, autocast=autocast,
            scaler=scaler,
        )
        if world > 1:
            loss_value = _all_reduce_sum([loss_value], device)[0] / world
        history["train_seconds"] += time.perf_counter() - began
        history["tokens"] += cfg.batch_size * x.shape[1]
        record = {"step": step + 1, "lr": lr, "train_loss": loss_value,
                  "grad_norm": grad_norm}
        for key, value in record.items():
            history[key].append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
        done = step + 1
        if done == stop_after and done < cfg.max_steps:
            break
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            evaluate(done)
        due = done % cfg.checkpoint_every == 0 or done == cfg.max_steps
        if checkpoint_dir is not None and due:
            if rank == 0:
                state = (model, optimizer, scheduler, done, history, cfg)
                save_checkpoint(checkpoint_dir, *state)
            if world > 1:
                torch.distributed.barrier()
        if on_step is not None:
            on_step(done, history)
    # (to here)
    bar.close()
    model.eval()
    return history


def tokens_per_second(history: dict) -> float:
    """Training throughput of a run: tokens processed per second of training steps (evaluation excluded)."""
    return history["tokens"] / history["train_seconds"] if history["train_seconds"] else float("nan")


# --- speed ------------------------------------------------------------------------------------------------


def measure_matmul_flops(
    device="cpu", dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.0
) -> float:
    """This machine's achieved FLOP/s on large square matrix products, the practical peak for MFU (chapter 3).

    Runs ``n × n`` products for about ``seconds`` (after a warm-up) and counts 2n³ FLOPs each.
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
    model, batch: torch.Tensor, cfg: TrainConfig, steps: int = 10, warmup: int = 2, dtype: torch.dtype = torch.float32
) -> tuple[float, float]:
    """``(seconds per step, seconds of the warm-up steps)`` of full optimizer steps (forward, backward,
    clipping, AdamW) on one fixed ``batch``: the throughput measurements of chapter 3 and its benchmark
    script. Warm-up steps are not timed (they include ``torch.compile``'s compilation when it is used)."""
    optimizer = _optimizer(model, cfg)
    device = batch.device
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype in (torch.bfloat16, torch.float16))

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


# --- the base model artifact -------------------------------------------------------------------------------


def base_model_dir(profile: str) -> Path:
    """``artifact_dir("base-model", profile)``: ``model/`` (finished) and the runs' checkpoints inside."""
    from book_utils.cache import artifact_dir

    return artifact_dir(BASE_MODEL_ARTIFACT, profile)


def run_checkpoint_dir(profile: str, name: str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> Path:
    """Where run ``name`` keeps its resumable checkpoint: under ``base_model_dir(profile)``, in a folder
    named after a hash of both configs, so a changed configuration starts a fresh run instead of
    resuming from (or being refused by) another configuration's checkpoint."""
    import hashlib

    key = json.dumps([asdict(model_cfg), asdict(train_cfg)], sort_keys=True)
    return base_model_dir(profile) / f"{name}-checkpoint-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def base_configs(ctx, tokenizer) -> tuple[ModelConfig, TrainConfig]:
    """The base model's ``(ModelConfig, TrainConfig)`` for the current profile (vocabulary from the tokenizer)."""
    return preset("base", ctx.profile, len(tokenizer), seed=ctx.seed)


def shakespeare_lm_data(tokenizer, block_size: int, profile: str = "full"):
    """The Shakespeare splits (by whole play) as block datasets; the ``ci`` profile keeps 20,000 characters
    of each training play and 10,000 of each held-out play (the same code path, less text)."""
    from book_utils.assets import shakespeare_splits

    splits = shakespeare_splits()
    if profile == "ci":
        splits = {
            name: {t: text[: 20_000 if name == "train" else 10_000] for t, text in works.items()}
            for name, works in splits.items()
        }
    return build_lm_datasets(splits, tokenizer, block_size)


def held_out_excerpt(works: Mapping[str, str], n_chars: int) -> str:
    """About ``n_chars`` characters from the middle of each work (whole lines), joined by a blank line.

    Chapter 3 scores SmolLM2-135M, too slow on a CPU for two whole plays, on this excerpt of the test
    plays, and scores the other models on the same excerpt to compare like with like.
    """
    _check_positive_int("n_chars", n_chars)
    if not works:
        raise ValueError("no works to take an excerpt from")
    parts = []
    for title in sorted(works):
        text = works[title]
        begin = text.find("\n", len(text) // 2) + 1
        end = text.find("\n", begin + n_chars)
        parts.append(text[begin : end if end != -1 else len(text)])
    return "\n\n".join(parts)


def save_base_model(profile: str, model, tokenizer, history: dict | None = None) -> Path:
    """Write the finished base model and its tokenizer to ``base_model_dir(profile)/"model"``, atomically."""
    from book_utils.cache import atomic_dir

    folder = base_model_dir(profile) / "model"
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if history is not None:
            (tmp / "history.json").write_text(json.dumps(history))
    return folder


def default_nproc(device) -> int:
    """Processes for a training run: 2 on a CPU with at least 2 cores (one single-threaded process per core),
    else 1 (one GPU). On a shared CPU, one thread per process avoids the stalls of threads waiting for each
    other; chapter 3 measures it."""
    device = torch.device(device)
    return 2 if device.type == "cpu" and (os.cpu_count() or 1) >= 2 else 1


def load_trained(checkpoint_dir):
    """The ``LlamaForCausalLM`` in a finished run's checkpoint folder (eval mode)."""
    from transformers import LlamaForCausalLM

    from book_utils.cache import is_complete

    if not is_complete(checkpoint_dir):
        raise CheckpointError(f"no finished checkpoint in {checkpoint_dir}: train first (pt.run_cli or pt.train)")
    return LlamaForCausalLM.from_pretrained(checkpoint_dir).eval()


def pretrain_base_model(ctx, *, nproc: int | None = None):
    """Train the book's base model with the current profile's preset on ``nproc`` processes (default
    :func:`default_nproc`), resuming from its checkpoint if one is in the cache, save it, and return
    ``(model, tokenizer, history)``. Chapter 3 runs these steps one by one; :func:`load_base_model` calls
    this when the artifact is missing."""
    from book_utils.tokenization import load_or_train_tokenizer

    tokenizer = load_or_train_tokenizer(ctx)
    model_cfg, train_cfg = base_configs(ctx, tokenizer)
    checkpoint_dir = run_checkpoint_dir(ctx.profile, "base", model_cfg, train_cfg)
    nproc = nproc or default_nproc(ctx.device)
    run = run_cli(
        [
            "--preset",
            "base",
            "--profile",
            ctx.profile,
            "--seed",
            str(ctx.seed),
            "--checkpoint-dir",
            str(checkpoint_dir),
        ],
        nproc=nproc,
    )
    model = load_trained(checkpoint_dir).to(ctx.device)
    save_base_model(ctx.profile, model, tokenizer, run["history"])
    return model, tokenizer, run["history"]


def load_base_model(ctx):
    """The book's pretrained base model and its tokenizer, ``(model, tokenizer)``, in eval mode (chapter 3).

    Loaded from the artifact cache in seconds (``LlamaForCausalLM.from_pretrained``) when chapter 3 (or an
    earlier call) has trained it with this profile; otherwise trained now with the profile's preset (CPU:
    seconds for ``ci``, minutes for ``full``), saved, then loaded. Chapters 4c and 5 start from it.
    """
    from book_utils.cache import is_complete

    folder = base_model_dir(ctx.profile) / "model"
    if not is_complete(folder):
        print(f"no trained base model in {folder}: pretraining one with the {ctx.profile!r} profile")
        pretrain_base_model(ctx)
    return load_saved_llama(folder, ctx.device, what="the base model", retry="load_base_model")


def load_saved_llama(folder, device, *, what: str, retry: str):
    """``(model, tokenizer)`` of a ``save_pretrained`` Llama folder, in eval mode on ``device``.

    Shared by :func:`load_base_model` and chapter 4c's SFT model. A folder that cannot be loaded raises
    :class:`CheckpointError` naming ``what`` it held and the call (``retry``) to run after deleting it.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = LlamaForCausalLM.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(
            f"{what} in {folder} cannot be loaded ({error}); delete {folder} and call {retry} again"
        ) from error
    return model.to(device).eval(), tokenizer


# --- a character-level tokenizer for the nanoGPT anchor ---------------------------------------------------


def char_tokenizer(text: str):
    """A ``transformers`` fast tokenizer with one token per character of ``text`` (plus end-of-text and an
    unknown token), nanoGPT's ``shakespeare_char`` encoding; used for the anchor run of chapter 3."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    if not isinstance(text, str) or not text:
        raise ValueError("char_tokenizer needs a non-empty training text to collect its characters from")
    specials = ["<|endoftext|>", "<|unk|>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(text)))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))  # no merges: one token per character
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<|unk|>", clean_up_tokenization_spaces=False
    )


# --- command line (also under torchrun / accelerate launch) ------------------------------------------------


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m book_utils.pretraining",
        description="Pretrain the book's small Llama-style causal LM on the Shakespeare train split (chapter 3). "
        "Runs unchanged on several processes: torchrun --nproc_per_node 2 -m book_utils.pretraining ... "
        "(or accelerate launch --multi_gpu --num_processes 2 -m book_utils.pretraining ..., which hands over to "
        "the same launcher, also on CPUs).",
    )
    parser.add_argument(
        "--preset", default="base", choices=sorted(PRESETS), help="model and training sizes (default: base)"
    )
    parser.add_argument(
        "--profile", choices=("ci", "full"), default=None, help="sizes of this profile (default: $BOOK_PROFILE or full)"
    )
    parser.add_argument("--max-steps", type=int, help="override the preset's number of optimizer steps")
    parser.add_argument(
        "--batch-size", type=int, help="override the global batch size in blocks (split over processes)"
    )
    parser.add_argument("--eval-every", type=int, help="override how often (in steps) validation loss is measured")
    parser.add_argument("--lr", type=float, help="override the peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", type=Path, help="resumable checkpoints go here (default: none)")
    parser.add_argument("--out", type=Path, help="write the run's history and final validation loss here as JSON")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="no log lines (evaluations, final summary)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """The script entry point: ``python -m book_utils.pretraining --help``. Chapter 3 runs it on 1 and 2 processes.

    When ``WORLD_SIZE`` > 1 (set by ``torchrun`` and ``accelerate launch``), it joins the process group
    (nccl on GPUs, gloo on CPUs), pins one GPU per process (``LOCAL_RANK``) or splits the CPU cores, and
    :func:`train` shards every global batch over the processes.
    """
    args = _parse(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world > 1:
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    rank = torch.distributed.get_rank() if world > 1 else 0
    try:
        from book_utils.environment import pick_dtype, read_profile, seed_everything
        from book_utils.tokenization import load_or_train_tokenizer

        profile = args.profile or read_profile()
        seed_everything(args.seed)

        class _Ctx:  # what load_or_train_tokenizer needs from a BookContext
            pass

        ctx = _Ctx()
        ctx.profile, ctx.pick = profile, (lambda *, ci, full: ci if profile == "ci" else full)
        if rank == 0:  # rank 0 trains and caches the tokenizer if needed; the others then read it
            tokenizer = load_or_train_tokenizer(ctx)
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            tokenizer = load_or_train_tokenizer(ctx)
        overrides = {
            k: v
            for k, v in (
                ("max_steps", args.max_steps),
                ("batch_size", args.batch_size),
                ("eval_every", args.eval_every),
                ("lr", args.lr),
            )
            if v is not None
        }
        model_cfg, train_cfg = preset(args.preset, profile, len(tokenizer), seed=args.seed, **overrides)
        data = shakespeare_lm_data(tokenizer, model_cfg.block_size, profile)
        model = build_model(model_cfg, tokenizer, seed=args.seed).to(device)
        began = time.perf_counter()
        history = train(
            model,
            data,
            train_cfg,
            checkpoint_dir=args.checkpoint_dir,
            progress=not args.no_progress,
            tokenizer=tokenizer,
            sample_prompt=SAMPLE_PROMPT,
            dtype=pick_dtype(device),
            log=print if rank == 0 and not args.quiet else None,
        )
        result = {
            "preset": args.preset,
            "profile": profile,
            "world_size": world,
            "wall_seconds": time.perf_counter() - began,
            "model_config": asdict(model_cfg),
            "train_config": asdict(train_cfg),
            "history": history,
        }
        if rank == 0 and args.out is not None:
            from book_utils.cache import atomic_write_text

            atomic_write_text(args.out, json.dumps(result))
        if rank == 0 and not args.quiet:
            print(
                f"done: {train_cfg.max_steps} steps on {world} process(es), "
                f"final val loss {history['val_loss'][-1]:.4f}"
            )
        return result
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def run_cli(args: list[str], nproc: int = 1, out: Path | str | None = None, echo: bool = False) -> dict:
    """Run this module's command line on ``nproc`` processes (``torchrun`` when ``nproc`` > 1), each with
    ``cpu_count // nproc`` threads, and return the JSON result it writes (with ``command`` and ``stdout``
    added); ``echo`` prints rank 0's log lines as they come. Chapter 3 trains the base model this way and
    compares a 1-process with a 2-process run. Raises ``RuntimeError`` with the end of stderr on failure."""
    import tempfile

    _check_positive_int("nproc", nproc)
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="pretraining-run-")) / "result.json"
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    command = [*launcher, "-m", "book_utils.pretraining", *args, "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    lines = []
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        for line in process.stdout:
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
        code = process.wait()
        stderr.seek(0)
        errors = stderr.read()
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {code}:\n{errors[-3000:]}")
    result = json.loads(out.read_text())
    shown = f"torchrun --nproc_per_node {nproc}" if nproc > 1 else "python"
    result["command"] = " ".join([shown, "-m", "book_utils.pretraining", *args])
    result["stdout"] = "".join(lines)
    return result


if __name__ == "__main__":
    main()
