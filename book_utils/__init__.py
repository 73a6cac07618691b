"""Helper package of the book *LLM Principles & Engineering Practice: from attention to
SFT*.

Modules mirror the chapters; each function's docstring says where the book teaches
it.

- :mod:`book_utils.environment` — ``setup()``: profile, seeds, device, dtype, offline
  flag (every chapter)
- :mod:`book_utils.assets` — offline corpora and pretrained models from PyPI packages
  (every chapter)
- :mod:`book_utils.cache` — the artifact cache shared between chapters, atomic writes
  (chapter 3 on)
- :mod:`book_utils.plotting` — the book's figure style (every chapter)
- :mod:`book_utils.ngram` — character n-gram language models and perplexity (chapter 1)
- :mod:`book_utils.attention` — scaled dot-product and multi-head attention, masks,
  cost (chapter 2)
- :mod:`book_utils.transformer` — position encodings, a pre-norm Transformer block, a
  tiny decoder (chapter 2)
- :mod:`book_utils.tokenization` — byte-level BPE, special tokens, the chat template
  (chapter 3)
- :mod:`book_utils.pretraining` — causal-LM pretraining of the book's base model, also
  under torchrun (chapter 3)
- :mod:`book_utils.mlm` — BERT-style masking, the masked-LM loss, fill-mask (chapter 3)
- :mod:`book_utils.classification` — fine-tuning an encoder for classification and NER,
  baselines (chapter 4)
- :mod:`book_utils.metrics` — offline ``evaluate`` metrics, bootstrap intervals,
  calibration (chapter 4)
- :mod:`book_utils.sft_data` — SFT records, chat templates, cleaning, validation, loss
  masks, packing (chapter 4b)
- :mod:`book_utils.instruction_tuning` — prompt-masked SFT of decoders, LoRA,
  evaluation, forgetting (chapter 4c)
- :mod:`book_utils.decoding` — decoding strategies from scratch, repetition metrics, KV
  cache, batching (chapter 5)
- :mod:`book_utils.compression` — int8/fp16 quantization, distillation, pruning, ONNX
  export (chapter 5)
- :mod:`book_utils.serving` — a FastAPI service with validation, a background uvicorn
  server, a load test (chapter 5)
- :mod:`book_utils.faq` — sliding windows, k-fold evaluation, training-time and memory
  arithmetic (chapter 6)
"""

from book_utils.environment import BookContext, setup

__all__ = ["BookContext", "setup"]
__version__ = "0.1.0"
