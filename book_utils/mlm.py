"""Masked language modelling (掩码语言模型), the pretraining objective of BERT, written
from scratch.

Taught in chapter 3, "Masked-LM". BERT (Devlin et al., 2019) hides 15 % of the tokens of
its input and trains a bidirectional encoder (编码器) to recover them. Of the chosen
tokens, 80 % become ``[MASK]``, 10 % a random token and 10 % stay as they are; special
tokens and padding are never chosen. The loss is the cross-entropy over the chosen
positions only:

    L_MLM = -(1/|M|) * sum_{i in M} log p(x_i | x~),
    x~ = the corrupted input, M = the chosen positions.

:func:`bert_mask` draws its random numbers in the same order as
``transformers.DataCollatorForLanguageModeling.torch_mask_tokens``, so the same seeded
generator gives the very same masks (checked in ``tests/test_mlm.py``);
:func:`masking_rates` measures the proportions. The rest trains and queries a tiny
``BertForMaskedLM`` on Shakespeare: data blocks, a loss computed only at the masked
positions, a plain AdamW-with-warmup loop, and fill-mask done correctly (logits read
only where ``input_ids == mask_token_id``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "IGNORE_INDEX",
    "BERT_SPLIT",
    "bert_mask",
    "mask_with_tokenizer",
    "masking_rates",
    "compare_rates",
    "mlm_loss",
    "masked_lm_forward",
    "with_bert_specials",
    "encode_blocks",
    "fixed_masked_batches",
    "CASES",
    "evaluate_mlm",
    "masked_accuracy",
    "unigram_log_probs",
    "unigram_cross_entropy",
    "unigram_accuracy",
    "TrainHistory",
    "train_mlm",
    "mask_probabilities",
    "fill_mask",
    "fill_mask_table",
    "tied_embedding_fill",
]

#: Label of positions that carry no loss (PyTorch's ``cross_entropy`` default
#: ``ignore_index``).
IGNORE_INDEX = -100
#: BERT's split of the chosen tokens: (to ``[MASK]``, to a random token, left
#: unchanged).
BERT_SPLIT = (0.8, 0.1, 0.1)


# --- argument checks ------------------------------------------------------------------


def _check_open_probability(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 < float(value) < 1.0
    ):
        raise ValueError(
            f"{name} must be a probability strictly between 0 and 1 (BERT uses 0.15), "
            f"got {value!r}"
        )
    return float(value)


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in split)
    except (TypeError, ValueError):
        raise ValueError(
            f"split must be three numbers (mask, random, keep), got {split!r}"
        ) from None
    if len(parts) != 3 or any(p < 0 or p > 1 for p in parts):
        raise ValueError(
            "split must be three fractions in [0, 1] (mask, random, keep), "
            f"got {split!r}"
        )
    if not math.isclose(sum(parts), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"split fractions (mask, random, keep) must sum to 1, got {split!r} "
            f"(sum {sum(parts):.6g}); "
            "BERT uses (0.8, 0.1, 0.1)"
        )
    return parts  # type: ignore[return-value]


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_ids(input_ids: object) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (
        torch.int64,
        torch.int32,
    ):
        raise TypeError(
            "input_ids must be an integer torch.Tensor of token ids, "
            f"got {type(input_ids).__name__}"
        )
    return input_ids


def _mask_token_id(tokenizer) -> int:
    if (
        getattr(tokenizer, "mask_token", None) is None
        or tokenizer.mask_token_id is None
    ):
        raise ValueError(
            f"{type(tokenizer).__name__} has no mask token, so it cannot be used for "
            "masked language modelling; "
            "load a BERT-style tokenizer (e.g. book_utils.assets.load_minilm()) "
            "or add one with "
            "tokenizer.add_special_tokens({'mask_token': '[MASK]'})"
        )
    return int(tokenizer.mask_token_id)


# --- masking --------------------------------------------------------------------------


def bert_mask(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int | None,
    vocab_size: int,
    special_ids: Iterable[int] = (),
    never_mask: torch.Tensor | None = None,
    mlm_probability: float = 0.15,
    split: Sequence[float] = BERT_SPLIT,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of a batch of token ids: returns ``(inputs, labels)``, both
    shaped like ``input_ids``.

    Each position not in ``special_ids`` (which should include padding) and not set in
    ``never_mask`` is chosen with probability ``mlm_probability``. A chosen position
    keeps its original id as its label; every other label is ``-100`` (no loss). The
    chosen inputs are replaced by ``mask_token_id`` with probability ``split[0]``, by a
    uniformly random id in ``[0, vocab_size)`` with probability ``split[1]``, and left
    unchanged otherwise. Why the 10 % / 10 %: at fine-tuning time no ``[MASK]`` appears,
    so the model must also build a useful representation of tokens it sees (it cannot
    know which ones are the targets).

    The random numbers are drawn in the same order as transformers'
    ``DataCollatorForLanguageModeling`` (Bernoulli choice, Bernoulli ``[MASK]``,
    Bernoulli random-among-the-rest, ``randint`` ids), so passing a generator seeded
    like the collator's reproduces its masks exactly. Taught in chapter 3.
    """
    ids = _check_ids(input_ids)
    if mask_token_id is None:
        raise ValueError(
            "mask_token_id is None: the tokenizer has no [MASK] token, "
            "so it cannot be used for MLM"
        )
    _check_positive_int("vocab_size", vocab_size)
    p = _check_open_probability("mlm_probability", mlm_probability)
    p_mask, p_random, _ = _check_split(split)
    if never_mask is not None and never_mask.shape != ids.shape:
        raise ValueError(
            f"never_mask has shape {tuple(never_mask.shape)}, "
            f"input_ids {tuple(ids.shape)}"
        )

    protected = torch.isin(ids, torch.tensor(sorted(set(special_ids)), dtype=ids.dtype))
    if never_mask is not None:
        protected |= never_mask.bool()
    probability = torch.full(ids.shape, p)
    probability.masked_fill_(protected, 0.0)
    chosen = torch.bernoulli(probability, generator=generator).bool()

    inputs, labels = ids.clone(), ids.clone()
    labels[~chosen] = IGNORE_INDEX
    to_mask = (
        torch.bernoulli(torch.full(ids.shape, p_mask), generator=generator).bool()
        & chosen
    )
    inputs[to_mask] = mask_token_id
    # nothing left to randomise (the collator stops here too)
    if p_mask == 1.0 or p_random == 0.0:
        return inputs, labels
    # among the chosen positions not turned into [MASK], a share p_random / (1 - p_mask)
    # become random ids
    to_random = torch.bernoulli(
        torch.full(ids.shape, p_random / (1.0 - p_mask)), generator=generator
    ).bool()
    to_random &= chosen & ~to_mask
    random_ids = torch.randint(
        vocab_size, ids.shape, dtype=torch.long, generator=generator
    )
    inputs[to_random] = random_ids[to_random].to(ids.dtype)
    return inputs, labels


def mask_with_tokenizer(
    tokenizer,
    input_ids: torch.Tensor,
    *,
    mlm_probability: float = 0.15,
    split: Sequence[float] = BERT_SPLIT,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bert_mask` with the mask id, vocabulary size and special ids (padding
    included) of ``tokenizer``.

    Raises ``ValueError`` when the tokenizer has no mask token. Taught in chapter 3.
    """
    return bert_mask(
        input_ids,
        mask_token_id=_mask_token_id(tokenizer),
        vocab_size=len(tokenizer),
        special_ids=tokenizer.all_special_ids,
        mlm_probability=mlm_probability,
        split=split,
        generator=generator,
    )


def masking_rates(
    original: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    mask_token_id: int,
    maskable: torch.Tensor,
) -> dict[str, float]:
    """Measure a corruption: the chosen share of ``maskable`` positions and the
    [MASK]/random/unchanged split.

    Returns ``chosen`` (chosen / maskable), ``[MASK]``, ``random``, ``unchanged``
    (shares of the chosen), the counts ``n_maskable`` and ``n_chosen``,
    ``protected_chosen`` (chosen positions outside ``maskable``: must be 0) and
    ``labels_ok`` (1.0 when labels equal the original ids exactly where chosen, -100
    elsewhere, and unchosen inputs are untouched). A random draw that happens to equal
    the original id counts as unchanged (probability 1/vocab). Taught in chapter 3.
    """
    if not (original.shape == inputs.shape == labels.shape == maskable.shape):
        raise ValueError(
            "original, inputs, labels and maskable must have the same shape"
        )
    chosen = labels != IGNORE_INDEX
    n_chosen = int(chosen.sum())
    if n_chosen == 0:
        raise ValueError(
            "no position was chosen (all labels are -100): use a larger batch"
        )
    as_mask = chosen & (inputs == mask_token_id)
    unchanged = chosen & (inputs == original)
    labels_ok = bool((labels[chosen] == original[chosen]).all()) and bool(
        (inputs[~chosen] == original[~chosen]).all()
    )
    return {
        "chosen": n_chosen / int(maskable.sum()),
        "[MASK]": int(as_mask.sum()) / n_chosen,
        "random": int((chosen & ~as_mask & ~unchanged).sum()) / n_chosen,
        "unchanged": int(unchanged.sum()) / n_chosen,
        "n_maskable": float(maskable.sum()),
        "n_chosen": float(n_chosen),
        "protected_chosen": float((chosen & ~maskable.bool()).sum()),
        "labels_ok": float(labels_ok),
    }


def compare_rates(
    rates: dict[str, dict[str, float]],
    *,
    mlm_probability: float = 0.15,
    split: Sequence[float] = BERT_SPLIT,
):
    """A table (pandas DataFrame) of measured rates next to the expected ones, with
    binomial z-scores.

    ``rates`` maps a name (e.g. ``"ours"``, ``"collator"``) to a :func:`masking_rates`
    result. The z-score of a share is (measured − expected) / sqrt(expected·(1 −
    expected)/n): |z| < 3 is what chance allows. Taught in chapter 3.
    """
    import pandas as pd

    p = _check_open_probability("mlm_probability", mlm_probability)
    expected = dict(
        zip(
            ("chosen", "[MASK]", "random", "unchanged"),
            (p, *_check_split(split)),
            strict=True,
        )
    )
    rows = {}
    for name, r in rates.items():
        for key, exp in expected.items():
            n = r["n_maskable"] if key == "chosen" else r["n_chosen"]
            se = math.sqrt(exp * (1 - exp) / n) if 0 < exp < 1 else float("nan")
            rows[(key, name)] = {
                "expected": exp,
                "measured": r[key],
                "z": (r[key] - exp) / se,
            }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["rate", "source"])


# --- the loss -------------------------------------------------------------------------


def mlm_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """The MLM loss from scratch: ``-(1/|M|) Σ_{i∈M} log softmax(logits_i)[labels_i]``
    over labelled positions.

    ``logits`` is ``(..., V)`` and ``labels`` is ``(...)`` with ``ignore_index`` where
    there is no target. Equal to ``F.cross_entropy(logits.flatten(0, -2),
    labels.flatten(), ignore_index=-100)``. Note the minus sign: the loss is positive
    (errata A7: one masked token predicted with p = 0.7 costs +0.357 nats). Raises
    ``ValueError`` when no position is labelled (the mean would be 0/0). Taught in
    chapter 3.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} "
            "plus a vocabulary axis"
        )
    chosen = labels != ignore_index
    if not bool(chosen.any()):
        raise ValueError(
            "no labelled position: every label is ignore_index, "
            "so the MLM loss is undefined"
        )
    log_p = logits[chosen].float().log_softmax(dim=-1)  # (|M|, V)
    return -log_p.gather(1, labels[chosen].long()[:, None]).mean()


def masked_lm_forward(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and logits of a BERT-style masked LM computed **only at the labelled
    positions**.

    ``model(input_ids, labels=labels)`` projects every position onto the whole
    vocabulary (B·T·V logits) and then ignores the ~85 % without a label; here the
    encoder runs on everything but the output head only on the ~15 % that count, which
    is the same loss for about 15 % of the output-layer cost. Returns ``(loss, logits)``
    with ``logits`` of shape ``(n_labelled, V)``. Taught in chapter 3.
    """
    head = getattr(model, "cls", None)  # BERT's MLM head
    head = getattr(model, "lm_head", None) if head is None else head  # RoBERTa's
    # ModernBERT's
    if head is None and hasattr(model, "head") and hasattr(model, "decoder"):
        head = torch.nn.Sequential(model.head, model.decoder)
    if head is None or not hasattr(model, "base_model") or model.base_model is model:
        raise TypeError(
            "expected a BERT-, RoBERTa- or ModernBERT-style *ForMaskedLM "
            "(an encoder and its head), "
            f"got {type(model).__name__}"
        )
    hidden = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask
    ).last_hidden_state
    chosen = labels != IGNORE_INDEX
    if not bool(chosen.any()):
        raise ValueError("no labelled position in this batch: nothing to predict")
    logits = head(hidden[chosen])
    return mlm_loss(logits, labels[chosen]), logits


# --- data -----------------------------------------------------------------------------


def with_bert_specials(tokenizer):
    """Give a byte-level BPE tokenizer (the book's, chapter 3) BERT's ``[CLS]``,
    ``[SEP]`` and ``[MASK]``.

    The three tokens are appended to the vocabulary (ids ``len(tokenizer)`` onwards),
    ``tokenizer(text)`` then wraps every text as ``[CLS] … [SEP]`` like BERT's
    tokenizer, and ``[MASK]`` absorbs the space in front of it (``lstrip``, as RoBERTa's
    ``<mask>``): in training a mask replaces a whole token such as ``Ġlove``, space
    included, so ``"food of [MASK],"`` must not leave a lone ``Ġ`` before it. Modifies
    and returns ``tokenizer``. Taught in chapter 3.
    """
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing

    if tokenizer.mask_token is not None or tokenizer.cls_token is not None:
        raise ValueError(f"{type(tokenizer).__name__} already has BERT special tokens")
    tokenizer.add_special_tokens(
        {
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": AddedToken("[MASK]", lstrip=True),
        }
    )
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tokenizer


def encode_blocks(
    text: str, tokenizer, block_size: int, max_blocks: int | None = None
) -> torch.Tensor:
    """Tokenise ``text`` into one stream and cut it into rows ``[CLS] t_1 …
    t_{block_size-2} [SEP]``.

    This is how BERT-style pretraining packs running text (no padding, every row full);
    lines are tokenised one by one so no warning about over-long inputs appears. Returns
    a ``(n_blocks, block_size)`` LongTensor; the tail shorter than a block is dropped.
    Taught in chapter 3.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or block_size < 8
    ):
        raise ValueError(
            "block_size must be an int >= 8 (two places go to [CLS] and [SEP]), "
            f"got {block_size!r}"
        )
    if max_blocks is not None:
        _check_positive_int("max_blocks", max_blocks)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no [CLS]/[SEP] tokens: "
            "use a BERT-style tokenizer"
        )
    body = block_size - 2
    # each line keeps its line break: a byte-level BPE tokenizer has a token for it
    # (WordPiece drops it)
    lines = [line + "\n" for line in text.splitlines() if line.strip()]
    stream: list[int] = []
    for start in range(0, len(lines), 2000):
        for ids in tokenizer(lines[start : start + 2000], add_special_tokens=False)[
            "input_ids"
        ]:
            stream.extend(ids)
        if max_blocks is not None and len(stream) >= max_blocks * body:
            break
    n = (
        len(stream) // body
        if max_blocks is None
        else min(len(stream) // body, max_blocks)
    )
    if n == 0:
        raise ValueError(
            f"text has {len(stream)} tokens, fewer than one block of {body}"
        )
    core = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    cls = torch.full((n, 1), tokenizer.cls_token_id, dtype=torch.long)
    sep = torch.full((n, 1), tokenizer.sep_token_id, dtype=torch.long)
    return torch.cat([cls, core, sep], dim=1)


#: What happened to a chosen position's input, as stored in ``batch["case"]``
#: (-1: not chosen).
CASES = ("[MASK]", "random", "kept")


def fixed_masked_batches(
    blocks: torch.Tensor, tokenizer, batch_size: int, seed: int = 1234
) -> list[dict]:
    """Mask ``blocks`` once, with a seeded :func:`mask_with_tokenizer`, into a list of
    batches.

    A validation set must not change between evaluations, otherwise a curve mixes model
    progress with masking luck; training batches, in contrast, are masked afresh every
    time ("dynamic masking", RoBERTa). Each batch is ``{"input_ids", "labels",
    "case"}``; ``case`` is -1 off the chosen positions and otherwise an index into
    :data:`CASES` (0 ``[MASK]``, 1 random, 2 kept), so that the loss can be split by
    what the model saw at the target. Taught in chapter 3.
    """
    _check_positive_int("batch_size", batch_size)
    mask_id = _mask_token_id(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(blocks), batch_size):
        original = blocks[start : start + batch_size]
        inputs, labels = mask_with_tokenizer(tokenizer, original, generator=generator)
        case = torch.where(inputs == mask_id, 0, torch.where(inputs == original, 2, 1))
        case[labels == IGNORE_INDEX] = -1
        batches.append({"input_ids": inputs, "labels": labels, "case": case})
    return batches


def _require_cases(batches: list[dict], who: str) -> None:
    """Refuse batches that do not record each target's case (see
    :func:`fixed_masked_batches`)."""
    if not batches or "case" not in batches[0]:
        raise ValueError(
            f"{who} needs batches with a 'case' entry: "
            "build them with fixed_masked_batches"
        )


def _case_means(sums: dict[str, list[float]]) -> dict[str, float]:
    """``{case: mean}`` from the ``[total, count]`` sums of :func:`_split_by_case`
    (empty cases left out)."""
    return {name: total / n for name, (total, n) in sums.items() if n}


def _split_by_case(
    nll: torch.Tensor, case: torch.Tensor, sums: dict[str, list[float]]
) -> None:
    for name, selected in [("all", case >= 0)] + [
        (n, case == i) for i, n in enumerate(CASES)
    ]:
        sums.setdefault(name, [0.0, 0])
        sums[name][0] += float(nll[selected].sum())
        sums[name][1] += int(selected.sum())


@torch.no_grad()
def evaluate_mlm(
    model, batches: list[dict], by_case: bool = False
) -> float | dict[str, float]:
    """Mean MLM loss (nats per masked token) of ``model`` over fixed ``batches``,
    weighted by token count.

    With ``by_case=True`` (batches from :func:`fixed_masked_batches`), a dict with the
    loss over ``all`` targets and separately over the targets whose input was
    ``[MASK]``, a random token, or ``kept``: only the ``[MASK]`` targets measure the use
    of context, a kept target can be copied from the input. Taught in chapter 3.
    """
    if not batches:
        raise ValueError("no batches to evaluate")
    if by_case:
        _require_cases(batches, "by_case")
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    for batch in batches:
        labels = batch["labels"]
        chosen = labels != IGNORE_INDEX
        if not bool(chosen.any()):
            continue
        _, logits = masked_lm_forward(model, batch["input_ids"], labels)
        nll = -logits.float().log_softmax(-1).gather(1, labels[chosen][:, None])[:, 0]
        _split_by_case(
            nll,
            batch["case"][chosen]
            if by_case
            else torch.zeros_like(nll, dtype=torch.long),
            sums,
        )
    model.train(was_training)
    if not sums:
        raise ValueError("no masked target in any batch")
    means = _case_means(sums)
    return means if by_case else means["all"]


@torch.no_grad()
def masked_accuracy(model, batches: list[dict]) -> dict[str, float]:
    """Top-1 accuracy of ``model`` on the masked targets of ``batches`` (from
    :func:`fixed_masked_batches`), over ``all`` targets and by case (``[MASK]``,
    ``random``, ``kept``): the share whose most probable token is the original one.
    Taught in chapter 3."""
    _require_cases(batches, "masked_accuracy")
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    for batch in batches:
        chosen = batch["labels"] != IGNORE_INDEX
        if bool(chosen.any()):
            _, logits = masked_lm_forward(model, batch["input_ids"], batch["labels"])
            hits = (logits.argmax(-1) == batch["labels"][chosen]).double()
            _split_by_case(hits, batch["case"][chosen], sums)
    model.train(was_training)
    return _case_means(sums)


def unigram_accuracy(
    train_blocks: torch.Tensor, batches: list[dict], vocab_size: int
) -> dict[str, float]:
    """Top-1 accuracy of the context-free unigram model on the masked targets, by case
    like :func:`masked_accuracy`: it always answers the most frequent training token.
    Taught in chapter 3."""
    _require_cases(batches, "unigram_accuracy")
    guess = int(unigram_log_probs(train_blocks, vocab_size).argmax())
    sums: dict[str, list[float]] = {}
    for b in batches:
        chosen = b["labels"] != IGNORE_INDEX
        _split_by_case((b["labels"][chosen] == guess).double(), b["case"][chosen], sums)
    return _case_means(sums)


def unigram_log_probs(train_blocks: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Log-probabilities ``(vocab_size,)`` of a context-free unigram model of
    ``train_blocks`` (add-one smoothed)."""
    _check_positive_int("vocab_size", vocab_size)
    counts = torch.bincount(train_blocks.flatten(), minlength=vocab_size).double() + 1.0
    if counts.numel() != vocab_size:
        raise ValueError(f"train_blocks holds ids >= vocab_size={vocab_size}")
    return (counts / counts.sum()).log()


def unigram_cross_entropy(
    train_blocks: torch.Tensor,
    batches: list[dict],
    vocab_size: int,
    by_case: bool = False,
) -> float | dict[str, float]:
    """Cross-entropy (nats) on the masked targets of ``batches`` of a context-free
    unigram model.

    The unigram is estimated on ``train_blocks`` with add-one smoothing. An MLM that
    does not beat it has learnt word frequencies, not context. ``by_case`` splits it
    like :func:`evaluate_mlm`. Taught in chapter 3.
    """
    if by_case:
        _require_cases(batches, "by_case")
    log_p = unigram_log_probs(train_blocks, vocab_size)
    sums: dict[str, list[float]] = {}
    for b in batches:
        chosen = b["labels"] != IGNORE_INDEX
        case = (
            b["case"][chosen]
            if by_case
            else torch.zeros(int(chosen.sum()), dtype=torch.long)
        )
        _split_by_case(-log_p[b["labels"][chosen]], case, sums)
    if not sums or sums["all"][1] == 0:
        raise ValueError("no masked target in any batch")
    means = _case_means(sums)
    return means if by_case else means["all"]


@dataclass
class TrainHistory:
    """What :func:`train_mlm` measured: losses per step, validation loss (overall and by
    case) at evaluations."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_by_case: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train_mlm(
    model,
    train_blocks: torch.Tensor,
    collator,
    val_batches: list[dict],
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    eval_every: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> TrainHistory:
    """Pretrain ``model`` (a ``BertForMaskedLM``) with masked language modelling: a
    plain, visible loop.

    Each step draws ``batch_size`` rows of ``train_blocks``, masks them with
    ``collator`` (transformers' ``DataCollatorForLanguageModeling``: fresh masks every
    step), computes the loss at the masked positions (:func:`masked_lm_forward`) and
    takes an AdamW step under linear warmup (``warmup_ratio`` of the steps) then linear
    decay, with gradients clipped at 1.0. BERT itself used Adam with warmup (lr 1e-4,
    10k warmup steps, weight decay 0.01), not SGD. Validation loss on ``val_batches`` is
    measured every ``eval_every`` steps and at the end, also split by case when the
    batches carry one (:func:`fixed_masked_batches`). Taught in chapter 3.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("eval_every", eval_every)
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if len(train_blocks) < batch_size:
        raise ValueError(
            f"{len(train_blocks)} training rows are fewer than one batch "
            f"of {batch_size}"
        )

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay
    )
    schedule = get_linear_schedule_with_warmup(
        optimizer, round(warmup_ratio * steps), steps
    )
    order = torch.Generator().manual_seed(seed)
    history, start = TrainHistory(), time.perf_counter()
    model.train()
    for step in tqdm(
        range(1, steps + 1),
        desc="MLM pretraining",
        disable=not progress,
        mininterval=10.0,
    ):
        rows = train_blocks[
            torch.randint(len(train_blocks), (batch_size,), generator=order)
        ]
        batch = collator(list(rows))
        loss, _ = masked_lm_forward(model, batch["input_ids"], batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.steps.append(step)
        history.train_loss.append(loss.item())
        if step % eval_every == 0 or step == steps:
            history.eval_steps.append(step)
            by_case = "case" in val_batches[0]
            result = evaluate_mlm(model, val_batches, by_case=by_case)
            history.val_loss.append(result["all"] if by_case else result)
            if by_case:
                history.val_by_case.append(result)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


# --- fill-mask ------------------------------------------------------------------------


@torch.no_grad()
def mask_probabilities(model, tokenizer, texts: Sequence[str]) -> list[torch.Tensor]:
    """For each text, the ``(n_masks, V)`` probabilities a masked-LM model gives at its
    ``[MASK]`` positions.

    The right way to read a masked LM (errata K7): run the whole sentence, then take the
    logits **only where** ``input_ids == mask_token_id``; an argmax over every position
    decodes positions the model was never asked about. Raises ``ValueError`` for a text
    without a mask token. Taught in chapter 3.
    """
    mask_id = _mask_token_id(tokenizer)
    if isinstance(texts, str):
        texts = [texts]
    for text in texts:
        if tokenizer.mask_token not in text:
            raise ValueError(
                f"text {text!r} contains no {tokenizer.mask_token}: nothing to fill in"
            )
    model.eval()
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    logits = model(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
    ).logits
    where = enc["input_ids"] == mask_id
    return [logits[i][where[i]].float().softmax(dim=-1) for i in range(len(texts))]


def fill_mask(
    model, tokenizer, texts: Sequence[str], k: int = 5
) -> list[list[list[tuple[str, float]]]]:
    """Top-``k`` ``(token, probability)`` for every ``[MASK]`` of every text (same as
    the fill-mask pipeline)."""
    _check_positive_int("k", k)
    result = []
    for probs in mask_probabilities(model, tokenizer, texts):
        top = probs.topk(k, dim=-1)
        result.append(
            [
                list(
                    zip(
                        tokenizer.convert_ids_to_tokens(ids.tolist()),
                        values.tolist(),
                        strict=True,
                    )
                )
                for values, ids in zip(top.values, top.indices, strict=True)
            ]
        )
    return result


def fill_mask_table(
    model,
    tokenizer,
    items: Sequence[tuple[str, str]],
    k: int = 5,
    unigram: torch.Tensor | None = None,
):
    """A DataFrame of fill-mask results for ``(text with one [MASK], true word)`` pairs.

    Columns: the line, the true word, the top-``k`` tokens with probabilities, the
    probability and rank (1 = best of the whole vocabulary) the model gives the true
    word, and, when ``unigram`` log-probabilities are given (:func:`unigram_log_probs`),
    the rank a context-free model gives it: a model that uses the context ranks the true
    word better than word frequency alone does. Taught in chapter 3.
    """
    import pandas as pd

    rows = []
    for (text, answer), probs in zip(
        items, mask_probabilities(model, tokenizer, [t for t, _ in items]), strict=True
    ):
        if probs.shape[0] != 1:
            raise ValueError(
                f"{text!r} must contain exactly one mask token, found {probs.shape[0]}"
            )
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(answer_ids) != 1:
            raise ValueError(
                f"answer {answer!r} is {len(answer_ids)} WordPieces; "
                "choose a one-piece word"
            )
        p, top = probs[0], probs[0].topk(k)
        rows.append(
            {
                "line": text,
                "answer": answer,
                f"top-{k}": ", ".join(
                    f"{t} {v:.2f}"
                    for t, v in zip(
                        tokenizer.convert_ids_to_tokens(top.indices.tolist()),
                        top.values,
                    )
                ),
                "p(answer)": float(p[answer_ids[0]]),
                "rank": int((p > p[answer_ids[0]]).sum()) + 1,
            }
        )
        if unigram is not None:
            rows[-1]["unigram rank"] = int((unigram > unigram[answer_ids[0]]).sum()) + 1
    return pd.DataFrame(rows)


@torch.no_grad()
def tied_embedding_fill(
    encoder, tokenizer, texts: Sequence[str], k: int = 5
) -> list[list[str]]:
    """Head-less guess: score the vocabulary by ``h_mask · E[w]`` (last hidden state ·
    input embeddings).

    A BERT MLM head is ``softmax(LayerNorm(GELU(h W + b)) Eᵀ + bias)`` with ``E`` tied
    to the input embeddings, so dropping the small transform is the cheapest stand-in
    when a checkpoint ships no head (as sentence-transformers' MiniLM does). It only
    works if the last layer still lives in the embedding space; chapter 3 measures that
    it does not. Returns the top-``k`` tokens for the first mask of each text.
    """
    _check_positive_int("k", k)
    mask_id = _mask_token_id(tokenizer)
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    hidden = encoder(**enc).last_hidden_state
    embeddings = encoder.get_input_embeddings().weight
    out = []
    for i in range(len(texts)):
        where = (enc["input_ids"][i] == mask_id).nonzero()
        if len(where) == 0:
            raise ValueError(f"text {texts[i]!r} contains no {tokenizer.mask_token}")
        scores = hidden[i, where[0, 0]] @ embeddings.T
        out.append(tokenizer.convert_ids_to_tokens(scores.topk(k).indices.tolist()))
    return out
