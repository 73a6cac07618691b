"""BERT's corruption of the input (掩码): 15 % of the tokens chosen, of those 80 %
``[MASK]``, 10 % a random token, 10 % unchanged; the argument checks the package
shares; measuring the proportions against what chance allows.

:func:`bert_mask` draws its random numbers in the same order as
``transformers.DataCollatorForLanguageModeling.torch_mask_tokens``, so the same seeded
generator gives the very same masks (checked in ``tests/test_mlm.py``). Taught in
chapter 3.3, book/03_pretraining/03_masked_lm.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from book_utils.checks import positive_int

#: Label of positions that carry no loss (PyTorch's ``cross_entropy`` default
#: ``ignore_index``).
IGNORE_INDEX = -100
#: BERT's split of the chosen tokens: (to ``[MASK]``, to a random token, left
#: unchanged).
BERT_SPLIT = (0.8, 0.1, 0.1)


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
    positive_int("vocab_size", vocab_size)
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
