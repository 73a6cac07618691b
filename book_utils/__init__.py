"""Helper package of the book *LLM Principles & Engineering Practice: from attention to
SFT*.

Modules mirror the chapters; each function's docstring says where the book teaches
it.

Plumbing every chapter shares:

- :mod:`book_utils.environment` — ``setup()``: profile, seeds, device, dtype, offline
  flag
- :mod:`book_utils.assets` — offline corpora and pretrained models from PyPI packages
- :mod:`book_utils.cache` — the artifact cache shared between chapters, atomic writes
- :mod:`book_utils.sizes` — every ci/full size the package decides, in one table
- :mod:`book_utils.checks` — argument checks with one error message per kind of input
- :mod:`book_utils.plotting` — the book's figure style

The chapters, in book order (a package is split by concern; its ``__init__`` maps
each submodule to the section that teaches it):

- :mod:`book_utils.ngram` — character n-gram models, perplexity, bits per character
  (chapter 1)
- :mod:`book_utils.attention` — scaled dot-product and multi-head attention, masks,
  cost (chapter 2.1)
- :mod:`book_utils.positions` — sinusoidal encodings and RoPE (chapter 2.2)
- :mod:`book_utils.transformer` — the feed-forward network, pre-norm blocks, a tiny
  decoder (chapter 2.2)
- :mod:`book_utils.tokenization` — byte-level BPE, a character tokenizer, the chat
  template (chapter 3.1)
- :mod:`book_utils.llama` — our own Llama, loadable with SmolLM2's weights (chapters
  3.2 and 5.1)
- :mod:`book_utils.pretraining` — pretraining the base model: configs, data, the
  training loop, checkpoints, the command line for torchrun (chapter 3.2)
- :mod:`book_utils.mlm` — BERT-style masking, the masked-LM loss, fill-mask
  (chapter 3.3)
- :mod:`book_utils.training` — the one ``TrainingArguments`` builder (chapters 4a, 4c)
- :mod:`book_utils.classification` — fine-tuning an encoder for classification and
  NER, baselines (chapter 4a)
- :mod:`book_utils.metrics` — offline ``evaluate`` metrics, bootstrap intervals,
  calibration (chapter 4a on)
- :mod:`book_utils.sft_data` — SFT records, sources, cleaning, validation, loss masks,
  packing (chapter 4b)
- :mod:`book_utils.instruction_tuning` — prompt-masked SFT of decoders, mid-training,
  LoRA, TRL (chapter 4c)
- :mod:`book_utils.evaluation` — log-likelihood scoring, instruction checks, a judge,
  statistics, contamination (chapter 4c.4)
- :mod:`book_utils.decoding` — decoding strategies from scratch, repetition, KV cache,
  batching (chapter 5.1)
- :mod:`book_utils.compression` — int8/fp16 quantization, distillation, pruning, ONNX
  export (chapter 5.2)
- :mod:`book_utils.serving` — a FastAPI service with validation, a background uvicorn
  server, a load test (chapter 5.2)
- :mod:`book_utils.compute` — FLOPs, training time and readable units (chapters 4c, 6)
- :mod:`book_utils.faq` — sliding windows, k-fold evaluation, memory arithmetic
  (chapter 6)
"""

from book_utils.environment import BookContext, setup

__all__ = ["BookContext", "setup"]
__version__ = "0.1.0"
