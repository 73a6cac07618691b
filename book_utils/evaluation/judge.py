"""A model as pairwise judge: :func:`judge_prompt` and :func:`judge_pairs` (both
orders, so position bias shows).

Taught in chapter 4c.4, book/04_sft/07_evaluation.ipynb ("A model as judge").
"""

from __future__ import annotations

from book_utils.evaluation.likelihood import (
    answer_continuation,
    continuation_logprobs,
    encode_pair,
)

# --- a model as judge -----------------------------------------------------------------

JUDGE_TEMPLATE = (
    "Here is a message and two possible replies to it.\n\n"
    "Message: {question}\n\nReply A: {a}\n\nReply B: {b}\n\n"
    "Which reply is the better answer to the message? Answer with one letter, A or B."
)


def judge_prompt(question: str, a: str, b: str) -> list[dict]:
    """The pairwise-judge conversation: a message, replies A and B, asked for A or B."""
    return [
        {"role": "user", "content": JUDGE_TEMPLATE.format(question=question, a=a, b=b)}
    ]


def judge_pairs(model, tokenizer, pairs, *, progress: bool = False):
    """Ask ``model`` which of two replies is better, for each ``(question, better,
    worse)`` in ``pairs``, in both orders. The verdict is the letter with the higher
    log-probability as the reply. Returns a DataFrame with one row per pair and order:
    ``pair``, ``better_first``, ``verdict`` ("A"/"B"), ``margin`` (log p(A) − log p(B)),
    ``picked_first``, ``correct``."""
    import pandas as pd
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    rows = []
    for index, (question, better, worse) in enumerate(
        tqdm(list(pairs), desc="judge", disable=not progress, leave=False)
    ):
        for better_first in (True, False):
            a, b = (better, worse) if better_first else (worse, better)
            messages = [
                *judge_prompt(question, a, b),
                {"role": "assistant", "content": ""},
            ]
            encoded = [
                encode_pair(tokenizer, *answer_continuation(tokenizer, messages, x))
                for x in ("A", "B")
            ]
            la, lb = continuation_logprobs(
                model, encoded[0][0], [e[1] for e in encoded]
            )
            verdict = "A" if la >= lb else "B"
            rows.append(
                {
                    "pair": index,
                    "better_first": better_first,
                    "verdict": verdict,
                    "margin": la - lb,
                    "picked_first": verdict == "A",
                    "correct": (verdict == "A") == better_first,
                }
            )
    model.train(was_training)
    return pd.DataFrame(rows)
