"""Items -> records: FLAN-style task builders with several phrasings (templates) per
task, the system prompts given to a share of records, and :func:`make_record`, which
turns one source item into one chat record of a task.

Taught in chapter 4b, book/04_sft/03_sft_data.ipynb ("Templates").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from book_utils.sft_data.schema import PLAYS, TASKS

#: Several phrasings per task; ``{text}`` is the review or passage, ``{options}`` the
#: listed plays.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "sentiment": (
        "Is the sentiment of this review positive or negative?\n\nReview: {text}",
        "Review: {text}\n\nWas the customer happy (positive) or unhappy (negative)? "
        "Answer positive or negative.",
        "Classify the sentiment of the following product review as positive or "
        "negative.\n\n{text}",
        "{text}\n\nSentiment (positive/negative):",
    ),
    "rating": (
        "How many stars, from 1 to 5, did the customer give?\n\nReview: {text}",
        "Review: {text}\n\nPredict the star rating (1-5). Answer with one digit.",
        "Read the review and give its rating on a scale of 1 to 5.\n\n{text}",
        "{text}\n\nRating (1-5):",
    ),
    "recommend": (
        "Would the author of this review recommend the product? Answer yes or no."
        "\n\nReview: {text}",
        "Review: {text}\n\nDoes the customer recommend this item (yes/no)?",
        "Based on the review below, would the customer recommend it to a friend? "
        "Reply yes or no.\n\n{text}",
    ),
    "play": (
        "Which Shakespeare play is this passage from?\n\n{text}\n\nOptions: {options}",
        "{text}\n\nFrom which play? Choose one of: {options}.",
        "Name the play this speech comes from ({options}).\n\n{text}",
    ),
    "continue": (
        "Continue this passage from {title}:\n\n{text}",
        "Here are two lines from {title}. Write the next two.\n\n{text}",
        "{text}\n\nContinue in the same style.",
    ),
}

#: System prompts given to a share of records, so the model sees conversations with
#: and without one.
SYSTEM_PROMPTS = {
    "reviews": "You label customer reviews. Reply with the label only.",
    "shakespeare": "You are an expert on Shakespeare.",
    "chat": "You are a friendly conversation partner. Keep your replies short.",
}


def _rng_for(source_id: str, seed: int) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}/{source_id}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def review_answer(task: str, item: Mapping) -> str | None:
    """The label of a review for ``task``: sentiment from the rating (4-5 positive,
    1-2 negative, 3 none)."""
    if task == "sentiment":
        if item["rating"] == 3:
            return None
        return "positive" if item["rating"] >= 4 else "negative"
    if task == "rating":
        return str(item["rating"])
    if task == "recommend":
        return "yes" if item["recommended"] else "no"
    raise ValueError(f"{task!r} is not a review task")


def make_record(task: str, item: Mapping, seed: int = 0) -> dict | None:
    """One record of ``task`` from a source ``item`` (template, options and system
    prompt drawn with a generator seeded by the item, so the same item always gives the
    same record); ``None`` if the item cannot make this task (a 3-star review has no
    sentiment, a short speech no continuation)."""
    rng = _rng_for(f"{task}:{item['source_id']}", seed)
    messages: list[dict] = []
    answer = None
    if task in ("sentiment", "rating", "recommend"):
        answer = review_answer(task, item)
        if answer is None:
            return None
        template = TEMPLATES[task][rng.integers(len(TEMPLATES[task]))]
        if rng.random() < 0.25:
            messages.append({"role": "system", "content": SYSTEM_PROMPTS["reviews"]})
        messages += [
            {"role": "user", "content": template.format(text=item["text"])},
            {"role": "assistant", "content": answer},
        ]
    elif task == "play":
        answer = PLAYS[item["play"]]
        others = [p for p in sorted(PLAYS) if p != item["play"]]
        options = [item["play"], *rng.choice(others, size=3, replace=False)]
        options = [PLAYS[p] for p in rng.permutation(options)]
        template = TEMPLATES[task][rng.integers(len(TEMPLATES[task]))]
        if rng.random() < 0.25:
            messages.append(
                {"role": "system", "content": SYSTEM_PROMPTS["shakespeare"]}
            )
        prompt = template.format(text=item["text"], options=", ".join(options))
        messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
    elif task == "continue":
        if "prompt" not in item:
            return None
        template = TEMPLATES[task][rng.integers(len(TEMPLATES[task]))]
        prompt = template.format(text=item["prompt"], title=PLAYS[item["play"]])
        messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": item["continuation"]},
        ]
    elif task in ("chat", "ifbench"):
        if task == "chat" and rng.random() < 0.25:
            messages.append({"role": "system", "content": SYSTEM_PROMPTS["chat"]})
        for i, turn in enumerate(item["turns"]):
            role = "user" if i % 2 == 0 else "assistant"
            messages.append({"role": role, "content": turn})
    else:
        raise ValueError(f"unknown task {task!r}; known tasks: {list(TASKS)}")
    key = f"{task}:{item['source_id']}".encode()
    digest = hashlib.blake2b(key, digest_size=6).hexdigest()
    return {
        "id": f"{task}-{digest}",
        "task": task,
        "source": item["source"],
        "source_id": item["source_id"],
        "messages": messages,
        "answer": answer,
    }
