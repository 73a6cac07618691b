"""Preference tuning (偏好微调) with DPO (direct preference optimization, 直接偏好优化):
after SFT, teach the model to prefer the reference reply over its own bad one,
without a reward model.

Chapter 4c.5, book/04_sft/08_preference_tuning.ipynb. Submodules, by concern:

- :mod:`~book_utils.preference.loss`: :func:`sequence_logprobs` (log π(y|x) of the
  completion tokens, next-token shifted), :func:`pair_logprobs`,
  :func:`completion_tokens` and :func:`dpo_loss` (loss with an optional SFT term,
  RPO; implicit rewards, margins, accuracy); the chapter checks the loss against
  TRL's ``DPOTrainer`` on the same tokens;
- :mod:`~book_utils.preference.data`: on-policy pairs from SFT records and the
  model's own replies (:func:`preference_pairs`: a wrong or unparsable answer to a
  closed task, a degenerate or generic reply (:func:`generic_replies`) to an open
  one), :func:`validate_pairs`,
  :func:`tokenize_pair` (the SFT loss mask of chapter 4b), :func:`tokenize_pairs`,
  :class:`PreferenceCollator`, :func:`preference_batches`, :func:`trl_rows`;
- :mod:`~book_utils.preference.measures`: :func:`kl_to_reference`,
  :func:`implicit_reward_accuracy`, :func:`preference_wins`,
  :func:`preference_win_rate`, :func:`generic_flags`, :func:`generic_share`;
- :mod:`~book_utils.preference.train`: :func:`train_dpo`, the loop the chapter shows,
  with :func:`lr_factor`, :func:`pair_order` and :func:`precompute_reference`.
"""

from book_utils.preference.data import (
    PAIR_FIELDS,
    REFERENCE_KEYS,
    PreferenceCollator,
    PreferenceValidationError,
    generic_replies,
    preference_batches,
    preference_pairs,
    reply_key,
    tokenize_pair,
    tokenize_pairs,
    trl_rows,
    validate_pairs,
)
from book_utils.preference.loss import (
    completion_tokens,
    dpo_loss,
    pair_logprobs,
    sequence_logprobs,
)
from book_utils.preference.measures import (
    generic_flags,
    generic_share,
    implicit_reward_accuracy,
    kl_to_reference,
    preference_win_rate,
    preference_wins,
)
from book_utils.preference.train import (
    HISTORY_KEYS,
    lr_factor,
    pair_order,
    precompute_reference,
    train_dpo,
)

__all__ = [
    "sequence_logprobs",
    "pair_logprobs",
    "completion_tokens",
    "dpo_loss",
    "PAIR_FIELDS",
    "REFERENCE_KEYS",
    "preference_pairs",
    "generic_replies",
    "reply_key",
    "PreferenceValidationError",
    "validate_pairs",
    "trl_rows",
    "tokenize_pair",
    "tokenize_pairs",
    "PreferenceCollator",
    "preference_batches",
    "kl_to_reference",
    "implicit_reward_accuracy",
    "preference_wins",
    "preference_win_rate",
    "generic_flags",
    "generic_share",
    "HISTORY_KEYS",
    "lr_factor",
    "pair_order",
    "precompute_reference",
    "train_dpo",
]
