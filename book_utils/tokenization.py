"""Byte-level BPE tokenization: train the book's tokenizer, explain its merges, measure
it (chapter 3).

Chapter 3, "Tokenization", trains a byte-level byte pair encoding (BPE, 字节对编码)
tokenizer (分词器) on the Shakespeare training split with the `tokenizers` library, adds
the special tokens (特殊词元) and a ChatML chat template (对话模板) that the SFT
chapters use, and saves it as a ``transformers`` fast tokenizer in the artifact cache.
The base model of chapter 3 and the instruction tuning of chapter 4c load it with
:func:`load_or_train_tokenizer`.

Byte level means the base vocabulary (词表) is the 256 possible bytes, so any text, in
any script, encodes without an unknown token and decodes back to exactly the same
string.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from book_utils.sizes import TOKENIZER_CHARS, VOCAB_SIZE, for_profile

#: The four special tokens, in vocabulary order: they get ids 0, 1, 2, 3 (before the 256
#: byte tokens). ``eos`` ends a document in pretraining; ``pad`` fills batches;
#: ``im_start``/``im_end`` frame chat turns.
SPECIAL_TOKENS = {
    "eos": "<|endoftext|>",
    "pad": "<|pad|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
}

#: Size of the byte alphabet every byte-level BPE vocabulary starts from.
N_BYTES = 256

#: Smallest vocabulary :func:`train_bpe_tokenizer` accepts: the bytes plus the special
#: tokens (zero merges).
MIN_VOCAB_SIZE = N_BYTES + len(SPECIAL_TOKENS)

#: ChatML, the shape SmolLM2-Instruct uses:
#: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, and
#: ``<|im_start|>assistant\\n`` when ``add_generation_prompt=True``. Unlike SmolLM2's
#: template it adds no default system message. The assistant's content and its
#: ``<|im_end|>`` sit inside ``{% generation %}`` so that
#: ``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks the tokens SFT
#: trains on.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}"
    "{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

WORD_PATTERN = re.compile(r"[A-Za-z]+")


def _check_vocab_size(vocab_size) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise TypeError(
            f"vocab_size must be an int, got {type(vocab_size).__name__} {vocab_size!r}"
        )
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE vocabulary "
            f"holds the {N_BYTES} bytes plus the {len(SPECIAL_TOKENS)} special tokens "
            f"{list(SPECIAL_TOKENS.values())}, so it needs at least {MIN_VOCAB_SIZE} "
            "entries (and more for any merge). "
            f"Use vocab_size >= {MIN_VOCAB_SIZE}, e.g. 512."
        )


def _non_empty_texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(
            "texts must be an iterable of strings (e.g. a list of documents), "
            "not one string"
        )
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must contain only strings; found {sorted(set(bad))}")
    if not any(t.strip() for t in texts):
        raise ValueError(
            f"the training corpus is empty ({len(texts)} texts, "
            "none with any non-whitespace character): "
            "BPE learns its merges from text, so pass at least one non-empty document."
        )
    return texts


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2
):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a ``transformers``
    fast tokenizer.

    The vocabulary is the 4 :data:`SPECIAL_TOKENS` (ids 0-3), the 256 bytes, then one
    token per merge, in the order learned, up to ``vocab_size`` entries (fewer if no
    pair occurs ``min_frequency`` times). Text is pre-split GPT-2 style (words with
    their leading space, numbers, punctuation, whitespace runs) and merges never cross
    those pieces. ``eos``/``pad`` and :data:`CHAT_TEMPLATE` are set, decoding is
    lossless (``clean_up_tokenization_spaces=False``) and no token is added around the
    text. Taught in chapter 3.

    Raises ``ValueError`` when ``vocab_size`` < :data:`MIN_VOCAB_SIZE` or the corpus has
    no text.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    _check_vocab_size(vocab_size)
    texts = _non_empty_texts(texts)
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be a positive int, got {min_frequency!r}")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=True
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        # all 256 bytes, seen in the corpus or not
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        extra_special_tokens=[SPECIAL_TOKENS["im_start"], SPECIAL_TOKENS["im_end"]],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tokenizer_training_text(profile: str) -> list[str]:
    """The texts the book's tokenizer learns from: the Shakespeare *train* split only
    (validation and test plays never seen), one string per work; the ``ci`` profile
    keeps the first 10,000 characters of each."""
    from book_utils.assets import shakespeare_splits

    train = shakespeare_splits()["train"]
    limit = for_profile(TOKENIZER_CHARS, profile)
    return [train[title][:limit] for title in sorted(train)]


def default_vocab_size(profile: str) -> int:
    """512 in the ``ci`` profile, 4096 in ``full`` (chapter 3 measures why 4096 suits a
    small CPU model)."""
    return for_profile(VOCAB_SIZE, profile)


def load_or_train_tokenizer(profile: str, vocab_size: int | None = None):
    """The book's tokenizer: loaded from the artifact cache, or trained on the
    Shakespeare train split and saved there first (``save_pretrained``;
    ``AutoTokenizer.from_pretrained`` loads it back).

    ``vocab_size`` defaults to :func:`default_vocab_size` (512 in ``ci``, 4096 in
    ``full``); the artifact is
    ``artifact_dir(f"tokenizer-bpe{vocab_size}", profile)``. Trained in chapter 3,
    used by the base model and SFT chapters.
    """
    from transformers import AutoTokenizer

    from book_utils.cache import artifact_dir, load_or_build

    vocab_size = default_vocab_size(profile) if vocab_size is None else vocab_size
    _check_vocab_size(vocab_size)

    def build(folder: Path) -> None:
        train_bpe_tokenizer(
            tokenizer_training_text(profile), vocab_size
        ).save_pretrained(folder)

    return load_or_build(
        artifact_dir(f"tokenizer-bpe{vocab_size}", profile),
        build,
        AutoTokenizer.from_pretrained,
    )


# --- the algorithm, in plain Python ---------------------------------------------------


def bpe_merges(tokenizer) -> list[tuple[str, str]]:
    """The learned merges of a BPE tokenizer (``transformers`` or ``tokenizers``), in
    the order learned."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"not a BPE tokenizer (model type {model.get('type')!r})")
    return [
        tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
        for m in model["merges"]
    ]


def learn_bpe(
    word_counts: Mapping[str, int],
    num_merges: int,
    alphabet: Iterable[str] = (),
    min_frequency: int = 2,
) -> list[tuple[str, str]]:
    """Byte pair encoding in plain Python (Sennrich et al., 2016), to read rather than
    to run at scale.

    ``word_counts`` maps each pre-token (e.g. ``"Ġlow"``, already in byte-level
    characters) to its count. Each step counts every adjacent pair of symbols over all
    words (weighted by count), merges the most frequent pair everywhere into one new
    symbol and records it. Ties go to the pair whose symbols came first in the
    vocabulary (base symbols sorted by code point, then merges in order learned), the
    rule of the `tokenizers` library, so both learn the same merges. Stops early when no
    pair occurs ``min_frequency`` times (2, as in :func:`train_bpe_tokenizer`).
    Taught in chapter 3.
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    words = [
        (list(word), count) for word, count in word_counts.items() if word and count > 0
    ]
    base = sorted(set(alphabet) | {ch for word, _ in words for ch in word})
    rank = {symbol: i for i, symbol in enumerate(base)}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], rank[p[0]], rank[p[1]]))
        if pairs[best] < min_frequency:
            break
        merged = best[0] + best[1]
        rank.setdefault(merged, len(rank))
        merges.append(best)
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [merged]
                i += 1
    return merges


def byte_level_word_counts(texts: Iterable[str]) -> Counter[str]:
    """Pre-tokenize ``texts`` exactly as the book's tokenizer does and count the pieces
    (for :func:`learn_bpe`)."""
    from tokenizers import pre_tokenizers

    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return Counter(
        piece for text in texts for piece, _ in splitter.pre_tokenize_str(text)
    )


# --- measuring a tokenizer ------------------------------------------------------------


def char_tokenizer(text: str):
    """A ``transformers`` fast tokenizer with one token per character of ``text`` (plus
    ``<|endoftext|>`` and an unknown token ``<|unk|>``): nanoGPT's ``shakespeare_char``
    encoding. Chapter 3.1 measures it as the baseline of every tokenizer; chapter 3.2
    trains nanoGPT's character model on it."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    if not isinstance(text, str) or not text:
        raise ValueError(
            "char_tokenizer needs a non-empty training text to collect its characters "
            "from"
        )
    specials = ["<|endoftext|>", "<|unk|>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(text)))}
    # BPE without merges: one token per character
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        unk_token="<|unk|>",
        clean_up_tokenization_spaces=False,
    )


def encode_with_offsets(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and the character offset where each token starts (special
    tokens not added)."""
    encoding = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    return encoding["input_ids"], [start for start, _ in encoding["offset_mapping"]]


def tokenization_stats(
    tokenizer, text: str, unk_id: int | None = None
) -> dict[str, float]:
    """How a tokenizer cuts ``text``: the numbers chapter 3 compares tokenizers with.

    ``tokens`` (sequence length), ``tokens_per_word`` and ``chars_per_token`` (bytes per
    token too, for ASCII text), ``single_token_words``: the fraction of running words
    (maximal runs of letters) that no token boundary cuts, i.e. that sit inside one
    token; ``unknown``: tokens equal to ``unk_id``.
    """
    if not text:
        raise ValueError("text is empty: there is nothing to measure")
    ids, starts = encode_with_offsets(tokenizer, text)
    spans = np.array([m.span() for m in WORD_PATTERN.finditer(text)]).reshape(-1, 2)
    starts = np.sort(np.asarray(starts))
    # a token boundary strictly inside (word start, word end) splits the word
    inside = np.searchsorted(starts, spans[:, 1], "left") - np.searchsorted(
        starts, spans[:, 0], "right"
    )
    n_words = max(len(spans), 1)
    return {
        "vocab_size": len(tokenizer),
        "tokens": len(ids),
        "tokens_per_word": len(ids) / n_words,
        "chars_per_token": len(text) / len(ids),
        "bytes_per_token": len(text.encode("utf-8")) / len(ids),
        "single_token_words": float(np.mean(inside == 0))
        if len(spans)
        else float("nan"),
        "unknown": int(sum(i == unk_id for i in ids)) if unk_id is not None else 0,
    }


def token_frequencies(tokenizer, texts: Iterable[str]) -> np.ndarray:
    """How often each vocabulary entry occurs when ``texts`` are encoded (index = token
    id).

    Chapter 3 uses it to count learned tokens too rare in the training text for a model
    to learn them.
    """
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(
        list(texts), add_special_tokens=False
    )
    ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    return np.bincount(
        np.concatenate(ids) if ids else np.zeros(0, np.int64), minlength=len(tokenizer)
    )


def timed(fn: Callable, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``: the wall time of one call (used to report
    training costs)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
