"""Preference data (偏好数据): on-policy pairs from SFT records and the model's own
replies (:func:`preference_pairs`), their checks (:func:`validate_pairs`), their
tokens (:func:`tokenize_pair`, :func:`tokenize_pairs`, built with the SFT loss mask of
chapter 4b) and batches (:class:`PreferenceCollator`, :func:`preference_batches`);
:func:`trl_rows` gives the same pairs in TRL's conversational preference format.

Chapter 4c.5, book/04_sft/08_preference_tuning.ipynb ("Pairs from the model's own
mistakes").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import torch

from book_utils.checks import positive_int
from book_utils.decoding import repeated_ngram_rate
from book_utils.sft_data.masks import IGNORE_INDEX, tokenize_for_sft
from book_utils.sft_data.schema import CLOSED_TASKS, OPEN_TASKS, SPLITS

#: The columns of one pair.
PAIR_FIELDS = ("id", "task", "split", "source_id", "prompt", "chosen", "rejected")
SIDES = ("chosen", "rejected")
KEYS = ("input_ids", "attention_mask", "labels")
#: The frozen reference's log π_ref(y|x) of each side, when computed once up front.
REFERENCE_KEYS = ("reference_chosen_logps", "reference_rejected_logps")


# --- pairs from the model's replies --------------------------------------------------


def _rows(records) -> list:
    rows = records.to_list() if hasattr(records, "to_list") else list(records)
    if any(not isinstance(r, Mapping) for r in rows):
        raise TypeError("records must be SFT record dicts (see sft_data.schema)")
    return rows


def reply_key(reply: str) -> str:
    """A reply case- and whitespace-folded: two replies with one key are the same
    reply."""
    return " ".join(reply.lower().split())


def generic_replies(replies: Sequence[str | None], min_prompts: int = 3) -> set[str]:
    """The generic replies (通用回复, the "I don't know" of a chat model): the keys
    (:func:`reply_key`) of the replies given, word for word, to ``min_prompts`` or
    more of the prompts answered. A model that says the same thing to many
    different people is not answering them."""
    min_prompts = positive_int("min_prompts", min_prompts)
    counts = Counter(reply_key(r) for r in replies if r and r.strip())
    return {key for key, n in counts.items() if n >= min_prompts}


def _degenerate(reply: str, n: int, max_repeat: float) -> bool | None:
    words = reply.lower().split()
    if len(words) < n:
        return None  # too short to judge by repetition
    return repeated_ngram_rate(words, n) >= max_repeat


def preference_pairs(
    records,
    replies: Sequence[str | None],
    parse: Callable[[str, str], str | None],
    *,
    max_repeat: float = 0.3,
    n: int = 3,
    min_prompts: int = 3,
    split: str | None = None,
) -> list[dict]:
    """On-policy preference pairs: for each SFT record and the model's own reply to
    its prompt, a pair when the reply is bad, with the record's reference reply as
    ``chosen`` and the model's reply as ``rejected``.

    The rule:

    - closed task (sentiment, rating, ...): the reply is bad when it is wrong
      (``parse(task, reply)`` is an allowed answer other than the record's
      ``answer``, reason ``"wrong"``) or does not parse (``None``, reason
      ``"unparsed"``); a right reply gives no pair;
    - open task (chat, continue, ifbench): the reply is bad when it is degenerate:
      its repeated word n-gram rate (:func:`book_utils.decoding.repeated_ngram_rate`
      on the lower-cased whitespace words, ``n``-grams) is ``max_repeat`` or more
      (reason ``"degenerate"``; a reply of fewer than ``n`` words is not judged so),
      or when it is generic: the model gave it, word for word, to ``min_prompts``
      or more of the open prompts in ``records`` (:func:`generic_replies`, reason
      ``"generic"``);
    - no pair for a missing reply (``None``: the prompt did not fit), an empty one
      (the record contract forbids empty assistant turns) or one equal to the
      reference.

    Each pair keeps the record's ``id``, ``task``, ``source_id`` and split (the
    record's ``split`` field, else ``split``), with ``prompt`` = every message but
    the last, ``chosen``/``rejected`` strings and ``reason``. ``parse`` is chapter
    4b's :func:`book_utils.sft_data.parse_answer`.
    """
    rows = _rows(records)
    if len(replies) != len(rows):
        raise ValueError(
            f"{len(rows)} records but {len(replies)} replies: one reply per record, "
            "in order (None where there is none)"
        )
    n = positive_int("n", n)
    if not 0 < max_repeat <= 1:
        raise ValueError(f"max_repeat must be in (0, 1], got {max_repeat!r}")
    open_replies = [
        reply for r, reply in zip(rows, replies) if r.get("task") in OPEN_TASKS
    ]
    generic = generic_replies(open_replies, min_prompts)
    pairs = []
    for i, (record, reply) in enumerate(zip(rows, replies)):
        task, messages = record.get("task"), record.get("messages")
        if task not in CLOSED_TASKS and task not in OPEN_TASKS:
            raise ValueError(f"record {i}: unknown task {task!r}")
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"record {i}: messages must end with the reference reply")
        where = record.get("split", split)
        if where is None:
            raise ValueError(
                f"record {i} has no 'split' field: pass split='train' (or the split "
                "the records come from)"
            )
        reference = messages[-1]["content"]
        if reply is None or not reply.strip() or reply.strip() == reference.strip():
            continue
        if task in CLOSED_TASKS:
            parsed = parse(task, reply)
            reason = "unparsed" if parsed is None else "wrong"
            if parsed == record["answer"]:
                continue
        elif _degenerate(reply, n, max_repeat):
            reason = "degenerate"
        elif reply_key(reply) in generic:
            reason = "generic"
        else:
            continue
        pairs.append(
            {
                "id": record["id"],
                "task": task,
                "split": where,
                "source_id": record["source_id"],
                "prompt": [dict(m) for m in messages[:-1]],
                "chosen": reference,
                "rejected": reply,
                "reason": reason,
            }
        )
    return pairs


class PreferenceValidationError(ValueError):
    """Pairs break the preference-data contract; ``problems`` lists every
    ``(pair index, message)`` found."""

    def __init__(self, message: str, problems: list[tuple[int, str]]):
        super().__init__(message)
        self.problems = problems


def _pair_problems(pair, split: str | None) -> list[str]:
    if not isinstance(pair, Mapping):
        return [f"must be a dict, got {type(pair).__name__}"]
    missing = [f for f in PAIR_FIELDS if f not in pair]
    if missing:
        return [f"missing fields {missing}"]
    found = []
    prompt = pair["prompt"]
    if (
        not isinstance(prompt, list)
        or not prompt
        or any(
            not isinstance(m, Mapping) or not str(m.get("content", "")).strip()
            for m in prompt
        )
    ):
        found.append("empty prompt (or a prompt message with empty content)")
    elif prompt[-1].get("role") != "user":
        found.append("the prompt must end with a user message")
    for side in SIDES:
        if not isinstance(pair[side], str) or not pair[side].strip():
            found.append(f"empty {side} reply")
    if not found and pair["chosen"].strip() == pair["rejected"].strip():
        found.append("chosen == rejected (no preference to learn)")
    if pair["split"] not in SPLITS:
        found.append(f"split {pair['split']!r} is not one of {list(SPLITS)}")
    elif split is not None and pair["split"] != split:
        found.append(f"a {pair['split']!r} pair among {split!r} pairs (mixed splits)")
    return found


def validate_pairs(pairs: Sequence, *, split: str | None = None) -> int:
    """Check preference ``pairs``; return their number or raise
    :class:`PreferenceValidationError` naming every bad pair.

    Each pair needs the fields of :data:`PAIR_FIELDS`, a non-empty prompt ending with
    a user turn, non-empty ``chosen`` and ``rejected`` replies that differ, and a
    known split (with ``split`` given, every pair must be of that split: a set of
    training pairs must not mix in held-out ones). Across pairs: no ``id`` twice in
    one split, and no leakage: a ``source_id`` whose pairs sit in two splits (e.g.
    the same review in train and held-out pairs) makes every held-out measure
    optimistic.
    """
    if isinstance(pairs, (str, bytes, Mapping)):
        raise TypeError("pairs must be a sequence of pair dicts, not one dict")
    problems = [
        (i, p) for i, pair in enumerate(pairs) for p in _pair_problems(pair, split)
    ]
    owners: dict[str, tuple[str, int]] = {}
    seen: dict[tuple, int] = {}
    for i, pair in enumerate(pairs):
        if not isinstance(pair, Mapping) or any(f not in pair for f in PAIR_FIELDS):
            continue
        key = (pair["split"], pair["id"])
        if key in seen:
            problems.append((i, f"duplicate id {pair['id']!r} (pair {seen[key]})"))
        seen.setdefault(key, i)
        first, j = owners.setdefault(pair["source_id"], (pair["split"], i))
        if first != pair["split"]:
            problems.append(
                (
                    i,
                    f"leakage: source_id {pair['source_id']!r} is in {first!r} "
                    f"(pair {j}) and {pair['split']!r}: split by source item "
                    "(sft_data.split_of)",
                )
            )
    if problems:
        shown = "; ".join(f"pair {i}: {p}" for i, p in problems[:10])
        raise PreferenceValidationError(
            f"{len({i for i, _ in problems})} bad pairs (of {len(pairs)}): {shown}",
            problems,
        )
    return len(pairs)


def trl_rows(pairs: Sequence[Mapping]) -> list[dict]:
    """The pairs in TRL's conversational preference format: ``prompt`` (messages),
    ``chosen`` and ``rejected`` (one assistant message each)."""
    return [
        {
            "prompt": list(p["prompt"]),
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]


# --- tokens and batches --------------------------------------------------------------


def tokenize_pair(
    tokenizer, prompt_messages, chosen: str, rejected: str, max_length: int
) -> dict[str, list[int]]:
    """Tokenize one pair exactly as SFT tokenizes a record: each side is
    ``prompt_messages + [{"role": "assistant", "content": reply}]`` through
    :func:`book_utils.sft_data.masks.tokenize_for_sft`, so the labels are the
    reply's tokens and its end-of-turn token, -100 elsewhere. Returns
    ``chosen_input_ids``, ``chosen_attention_mask``, ``chosen_labels`` and the three
    ``rejected_`` lists.

    Raises ``ValueError`` when a side keeps no completion token within
    ``max_length`` (the prompt fills it): such a pair has nothing to compare.
    """
    out = {}
    for side, reply in zip(SIDES, (chosen, rejected)):
        messages = [*prompt_messages, {"role": "assistant", "content": reply}]
        encoded = tokenize_for_sft(tokenizer, messages, max_length)
        if all(label == IGNORE_INDEX for label in encoded["labels"][1:]):
            raise ValueError(
                f"the {side} reply has no token left within max_length={max_length}: "
                "the prompt fills it (raise max_length or drop the pair)"
            )
        out.update({f"{side}_{key}": encoded[key] for key in KEYS})
    return out


def tokenize_pairs(
    tokenizer, pairs: Sequence[Mapping], max_length: int
) -> tuple[list[dict], int]:
    """:func:`tokenize_pair` for every pair (its ``id`` kept); pairs with no
    completion token left within ``max_length`` are dropped and counted. Returns
    ``(rows, dropped)``."""
    rows, dropped = [], 0
    for pair in pairs:
        try:
            row = tokenize_pair(
                tokenizer, pair["prompt"], pair["chosen"], pair["rejected"], max_length
            )
        except ValueError as error:
            if "no token left" not in str(error):
                raise
            dropped += 1
            continue
        rows.append({"id": pair.get("id"), **row})
    return rows, dropped


class PreferenceCollator:
    """Pad tokenized pairs (:func:`tokenize_pair`) into a batch: ``chosen_`` and
    ``rejected_`` ``input_ids`` (pad id), ``attention_mask`` (0) and ``labels``
    (:data:`IGNORE_INDEX`), right-padded, both sides to one length so that
    :func:`~book_utils.preference.loss.pair_logprobs` can run them in one forward.
    Precomputed reference log-probabilities (:data:`REFERENCE_KEYS`, from
    :func:`~book_utils.preference.train.precompute_reference`) become float32
    tensors of the same names; other columns (``id``) are dropped."""

    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError(
                "pad_token_id is None: the tokenizer needs a pad token "
                "(set tokenizer.pad_token)"
            )
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        longest = max(len(f[f"{side}_input_ids"]) for f in features for side in SIDES)
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0}
        fill["labels"] = IGNORE_INDEX
        batch = {}
        for side in SIDES:
            for key in KEYS:
                rows = [list(f[f"{side}_{key}"]) for f in features]
                padded = [row + [fill[key]] * (longest - len(row)) for row in rows]
                batch[f"{side}_{key}"] = torch.tensor(padded, dtype=torch.long)
        for key in REFERENCE_KEYS:
            if key in features[0]:
                values = [f[key] for f in features]
                batch[key] = torch.tensor(values, dtype=torch.float32)
        return batch


def preference_batches(
    rows: Sequence[Mapping], batch_size: int, pad_token_id: int
) -> list[dict[str, torch.Tensor]]:
    """Tokenized pairs in order, collated ``batch_size`` at a time (the last batch may
    be smaller): what the measures of :mod:`~book_utils.preference.measures` take."""
    batch_size = positive_int("batch_size", batch_size)
    collate = PreferenceCollator(pad_token_id)
    return [collate(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
