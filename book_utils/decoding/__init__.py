"""Decoding (解码) from scratch: greedy, temperature, top-k, top-p, repetition penalty,
no-repeat-n-gram, the KV cache and batched generation with left padding.

Each logits processor is written out in a few lines and applied in the order
``transformers`` 5 applies them inside ``model.generate`` (repetition penalty →
no-repeat-n-gram → temperature → top-k → top-p), and sampling draws with
``torch.multinomial`` on the probabilities from the global RNG, as ``generate`` does. So
the same settings and the same seed give *the same tokens* as ``model.generate``;
chapter 5.1 checks it token for token.

The package also measures what the chapter plots: repetition (distinct-n, repeated
n-gram rate), the latency of one new token with and without the KV cache (键值缓存)
against context length, and throughput against batch size.

Every submodule is taught in chapter 5.1, book/05_deployment/01_decoding.ipynb:

- :mod:`~book_utils.decoding.strategies` — the logits processors,
  :class:`DecodingConfig`, :func:`process_logits`
- :mod:`~book_utils.decoding.generation` — left padding, the generation loop with or
  without the KV cache (:func:`generate_stream` yields it step by step, for a server
  that streams), stop tokens, :func:`generate_text`
- :mod:`~book_utils.decoding.repetition` — n-grams, distinct-n, the repeated n-gram rate
- :mod:`~book_utils.decoding.kv_cache` — a toy attention head with a cache, the memory
  of a full cache
- :mod:`~book_utils.decoding.timing` — :func:`synchronize`, per-token latency with and
  without the cache, generation time, throughput against batch size
"""

from book_utils.decoding.generation import (
    generate,
    generate_stream,
    generate_text,
    left_pad,
    stop_token_ids,
    until_stop,
)
from book_utils.decoding.kv_cache import ToyCachedAttention, kv_cache_bytes
from book_utils.decoding.repetition import distinct_n, ngrams, repeated_ngram_rate
from book_utils.decoding.strategies import (
    DecodingConfig,
    apply_repetition_penalty,
    apply_temperature,
    ban_repeated_ngrams,
    process_logits,
    top_k_filter,
    top_p_filter,
)
from book_utils.decoding.timing import (
    batch_throughput,
    step_latency,
    synchronize,
    time_generation,
)

__all__ = [
    "apply_repetition_penalty",
    "ban_repeated_ngrams",
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "DecodingConfig",
    "process_logits",
    "left_pad",
    "generate",
    "generate_stream",
    "stop_token_ids",
    "until_stop",
    "generate_text",
    "ngrams",
    "distinct_n",
    "repeated_ngram_rate",
    "ToyCachedAttention",
    "kv_cache_bytes",
    "synchronize",
    "step_latency",
    "time_generation",
    "batch_throughput",
]
