"""Preference tuning (偏好微调) with DPO (direct preference optimization, 直接偏好优化):
after SFT, teach the model to prefer the reference reply over its own bad one,
without a reward model.

Chapter 4c.5, book/04_sft/08_preference_tuning.ipynb. Submodules, by concern:

- :mod:`~book_utils.preference.loss`: :func:`sequence_logprobs` (log π(y|x) of the
  completion tokens, next-token shifted), :func:`pair_logprobs` and :func:`dpo_loss`
  (loss, implicit rewards, margins, accuracy); the chapter checks the loss against
  TRL's ``DPOTrainer`` on the same tokens;
- :mod:`~book_utils.preference.data`: on-policy pairs from SFT records and the
  model's own replies (:func:`preference_pairs`: a wrong or unparsable answer to a
  closed task, a degenerate reply to an open one), :func:`validate_pairs`,
  :func:`tokenize_pair` (the SFT loss mask of chapter 4b), :func:`tokenize_pairs`,
  :class:`PreferenceCollator`, :func:`preference_batches`, :func:`trl_rows`;
- :mod:`~book_utils.preference.measures`: :func:`kl_to_reference`,
  :func:`implicit_reward_accuracy`, :func:`preference_win_rate`;
- :mod:`~book_utils.preference.train`: :func:`train_dpo`, the loop the chapter shows,
  with :func:`lr_factor` and :func:`pair_order`.
"""

from book_utils.preference.data import (
    PAIR_FIELDS,
    PreferenceCollator,
    PreferenceValidationError,
    preference_batches,
    preference_pairs,
    tokenize_pair,
    tokenize_pairs,
    trl_rows,
    validate_pairs,
)
from book_utils.preference.loss import dpo_loss, pair_logprobs, sequence_logprobs
from book_utils.preference.measures import (
    implicit_reward_accuracy,
    kl_to_reference,
    preference_win_rate,
)
from book_utils.preference.train import HISTORY_KEYS, lr_factor, pair_order, train_dpo

__all__ = [
    "sequence_logprobs",
    "pair_logprobs",
    "dpo_loss",
    "PAIR_FIELDS",
    "preference_pairs",
    "PreferenceValidationError",
    "validate_pairs",
    "trl_rows",
    "tokenize_pair",
    "tokenize_pairs",
    "PreferenceCollator",
    "preference_batches",
    "kl_to_reference",
    "implicit_reward_accuracy",
    "preference_win_rate",
    "HISTORY_KEYS",
    "lr_factor",
    "pair_order",
    "train_dpo",
]
