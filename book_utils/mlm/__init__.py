"""Masked language modelling (掩码语言模型), the pretraining objective of BERT, written
from scratch.

Chapter 3.3, "Masked-LM" (book/03_pretraining/03_masked_lm.ipynb). BERT (Devlin et al.,
2019) hides 15 % of the tokens of its input and trains a bidirectional encoder (编码器)
to recover them. Of the chosen tokens, 80 % become ``[MASK]``, 10 % a random token and
10 % stay as they are; special tokens and padding are never chosen. The loss is the
cross-entropy over the chosen positions only:

    L_MLM = -(1/|M|) * sum_{i in M} log p(x_i | x~),
    x~ = the corrupted input, M = the chosen positions.

:func:`bert_mask` draws its random numbers in the same order as
``transformers.DataCollatorForLanguageModeling.torch_mask_tokens``, so the same seeded
generator gives the very same masks (checked in ``tests/test_mlm.py``);
:func:`masking_rates` measures the proportions. The rest trains and queries a tiny
``BertForMaskedLM`` on Shakespeare: data blocks, a loss computed only at the masked
positions, a plain AdamW-with-warmup loop, and fill-mask done correctly (logits read
only where ``input_ids == mask_token_id``).

Every submodule is taught in chapter 3.3, book/03_pretraining/03_masked_lm.ipynb:

- :mod:`~book_utils.mlm.masking` — BERT's 80/10/10 corruption, measured rates
- :mod:`~book_utils.mlm.loss` — the MLM loss, a forward pass with the head only at the
  labelled positions
- :mod:`~book_utils.mlm.data` — BERT specials for the BPE tokenizer, packed blocks,
  fixed validation masks
- :mod:`~book_utils.mlm.evaluation` — loss and top-1 accuracy by case, the unigram
  baseline
- :mod:`~book_utils.mlm.train` — the pretraining loop
- :mod:`~book_utils.mlm.fill_mask` — fill-mask, its table, the tied-embedding guess
"""

from book_utils.mlm.data import (
    CASES,
    encode_blocks,
    fixed_masked_batches,
    with_bert_specials,
)
from book_utils.mlm.evaluation import (
    evaluate_mlm,
    masked_accuracy,
    unigram_accuracy,
    unigram_cross_entropy,
    unigram_log_probs,
)
from book_utils.mlm.fill_mask import (
    fill_mask,
    fill_mask_table,
    mask_probabilities,
    tied_embedding_fill,
)
from book_utils.mlm.loss import masked_lm_forward, mlm_loss
from book_utils.mlm.masking import (
    BERT_SPLIT,
    IGNORE_INDEX,
    bert_mask,
    compare_rates,
    mask_with_tokenizer,
    masking_rates,
)
from book_utils.mlm.train import TrainHistory, train_mlm

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
