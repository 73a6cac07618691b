"""The pretrained encoder with a fresh classification head (分类头), or the same
architecture from random initialisation (the from-scratch baseline).

Taught in chapter 4a, book/04_sft/01_classification.ipynb (the FAQ,
book/06_reference/01_faq.ipynb, fine-tunes it one step by hand).
"""

from __future__ import annotations

import os

from book_utils.classification.data import LABEL_NAMES


def load_classifier(
    name: str | None = None,
    *,
    num_labels: int = 2,
    pretrained: bool = True,
    seed: int = 0,
):
    """Tokenizer + ``AutoModelForSequenceClassification``: the encoder with a fresh
    classification head (分类头).

    ``name=None`` is the book's offline MiniLM (``book_utils.assets.minilm_dir()``); any
    Hub name such as ``"bert-base-uncased"`` works the same way when online.
    ``pretrained=False`` builds the *same architecture* with random weights (the
    from-scratch baseline): only the config is read.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from book_utils.assets import minilm_dir

    if not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
    source = str(minilm_dir()) if name is None else name
    labels = (
        {
            "id2label": dict(enumerate(LABEL_NAMES)),
            "label2id": {n: i for i, n in enumerate(LABEL_NAMES)},
        }
        if num_labels == 2
        else {}
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source, num_labels=num_labels, **labels)
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") in ("1", "true", "yes")
        why = (
            "offline: HF_HUB_OFFLINE=1"
            if offline
            else "no local copy and the Hub did not answer"
        )
        raise RuntimeError(
            f"could not load {source!r} ({why}). "
            "Use name=None for the book's offline MiniLM, "
            "or connect to the internet to download this model."
        ) from error
    # the new head (and, from scratch, every weight) is drawn from this seed
    torch.manual_seed(seed)
    if pretrained:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config
        )
    else:
        model = AutoModelForSequenceClassification.from_config(config)
    return tokenizer, model
