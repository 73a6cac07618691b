"""Evaluating an LLM (模型评估): the yardsticks of chapter 4c.4.

- **Log-likelihood multiple choice**, as lm-evaluation-harness scores closed tasks:
  :func:`continuation_logprobs` (the summed log-probability of each allowed answer after
  the prompt, one shared prompt pass per item), :func:`score_choices` (accuracy by the
  raw sum and by the sum per character, lm-eval's ``acc`` and ``acc_norm``) and
  :func:`lm_eval_choices` (the same items through lm-eval itself, for the cross-check).
  Generate-and-parse is :func:`book_utils.instruction_tuning.evaluate_closed`.
- **Verifiable instructions**, IFEval style: :data:`CHECKS` (word and sentence counts,
  required and forbidden words, keyword frequency, JSON, bullet lists, case, ending
  phrase), :func:`follows` (strict or loose), :func:`instruction_prompts`, which adds
  such instructions to prompts, and :func:`instruction_scores` (IFEval's four numbers).
- **A model as pairwise judge**: :func:`judge_prompt` and :func:`judge_pairs` (both
  orders, so position bias shows).
- **Statistics**: :func:`items_for_halfwidth`, :func:`mcnemar_exact`;
  :func:`word_ngrams` and :func:`continuation_match` for contamination checks.

Every submodule is taught in chapter 4c.4, book/04_sft/07_evaluation.ipynb:

- :mod:`~book_utils.evaluation.likelihood` — :func:`encode_pair`,
  :func:`continuation_logprobs`, :func:`answer_continuation`, :func:`score_choices`,
  :func:`lm_eval_choices`
- :mod:`~book_utils.evaluation.instructions` — :data:`CHECKS`, :func:`follows`,
  :data:`CONFLICTS`, :func:`instruction_prompts`, :func:`instruction_scores`
- :mod:`~book_utils.evaluation.judge` — :data:`JUDGE_TEMPLATE`, :func:`judge_prompt`,
  :func:`judge_pairs`
- :mod:`~book_utils.evaluation.statistics` — :func:`items_for_halfwidth`,
  :func:`mcnemar_exact`
- :mod:`~book_utils.evaluation.contamination` — :func:`word_ngrams`,
  :func:`continuation_match`
"""

from book_utils.evaluation.contamination import continuation_match, word_ngrams
from book_utils.evaluation.instructions import (
    CHECKS,
    CONFLICTS,
    follows,
    instruction_prompts,
    instruction_scores,
)
from book_utils.evaluation.judge import JUDGE_TEMPLATE, judge_pairs, judge_prompt
from book_utils.evaluation.likelihood import (
    answer_continuation,
    continuation_logprobs,
    encode_pair,
    lm_eval_choices,
    score_choices,
)
from book_utils.evaluation.statistics import items_for_halfwidth, mcnemar_exact

__all__ = [
    "encode_pair",
    "continuation_logprobs",
    "answer_continuation",
    "score_choices",
    "lm_eval_choices",
    "CHECKS",
    "follows",
    "CONFLICTS",
    "instruction_prompts",
    "instruction_scores",
    "JUDGE_TEMPLATE",
    "judge_prompt",
    "judge_pairs",
    "items_for_halfwidth",
    "mcnemar_exact",
    "word_ngrams",
    "continuation_match",
]
