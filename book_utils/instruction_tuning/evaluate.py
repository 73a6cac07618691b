"""Scoring a chat model on the closed tasks: greedy batched replies, exact match with
the stated parser, accuracy with bootstrap intervals (paired before/after), and the
random-valid-label baseline. Chapter 4c, book/04_sft/04_instruction_tuning.ipynb;
chapter 4c.4 (book/04_sft/07_evaluation.ipynb) compares models with it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from book_utils.checks import positive_int
from book_utils.decoding import stop_token_ids, until_stop
from book_utils.instruction_tuning.data import context_length, prompt_of
from book_utils.sft_data import CLOSED_TASKS, parse_answer


@torch.no_grad()
def generate_replies(
    model,
    tokenizer,
    prompts: Sequence[list[dict]],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    progress: bool = False,
    context: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
) -> list[str | None]:
    """Greedy replies (deterministic) to chat ``prompts`` (lists of messages without
    the answer), batched with left padding so every prompt ends where generation
    starts (chapter 4c). With a ``temperature`` > 0 the replies are sampled instead
    (the full distribution at that temperature, the torch generator seeded with
    ``seed``: the same call gives the same replies), as chapter 4c.5 does to collect
    several replies per prompt.

    Each prompt is rendered with the tokenizer's chat template and
    ``add_generation_prompt=True``; generation stops at ``<|im_end|>`` or eos. A prompt
    that does not leave ``max_new_tokens`` free in the model's context (or ``context``
    tokens) gets ``None`` (the caller counts these). Returns the decoded replies,
    special tokens removed.
    """
    from tqdm.auto import tqdm

    positive_int("max_new_tokens", max_new_tokens)
    positive_int("batch_size", batch_size)
    if temperature is not None and not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 (or None for greedy), got {temperature!r}"
        )
    sampling = (
        dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
        if temperature
        else dict(do_sample=False)
    )
    limit = (context or context_length(model)) - max_new_tokens
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    replies: list[str | None] = [None] * len(prompts)
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    order = [i for i in by_length if len(encoded[i]) <= limit]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer)
    was_training = model.training
    model.eval()
    # sampling draws from a seeded fork of the RNG: the caller's stream is untouched
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
            chunk = order[start : start + batch_size]
            longest = max(len(encoded[i]) for i in chunk)
            gaps = [longest - len(encoded[i]) for i in chunk]
            ids = torch.tensor(
                [[pad] * gap + encoded[i] for i, gap in zip(chunk, gaps)], device=device
            )
            mask = torch.tensor(
                [[0] * gap + [1] * len(encoded[i]) for i, gap in zip(chunk, gaps)],
                device=device,
            )
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                **sampling,
                eos_token_id=stops,
                pad_token_id=pad,
            )
            for i, row in zip(chunk, out[:, longest:].tolist()):
                replies[i] = tokenizer.decode(
                    until_stop(row, stops), skip_special_tokens=True
                )
    model.train(was_training)
    return replies


def evaluate_closed(
    model,
    tokenizer,
    records,
    *,
    parse: Callable[[str, str], str | None] | None = None,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    progress: bool = False,
    context: int | None = None,
):
    """Score ``model`` on closed-task records: greedy reply → ``parse(task, reply)`` →
    exact match (chapter 4c).

    ``parse`` defaults to ``sft_data.parse_answer`` (None = the reply does not parse:
    a format failure). Returns a pandas DataFrame, one row per record: ``id``,
    ``task``, ``answer``, ``reply`` (None when the prompt does not fit the context),
    ``fits``, ``parsed``, ``format_ok``, ``correct``.
    """
    import pandas as pd

    parse = parse or parse_answer
    rows = records.to_list() if hasattr(records, "to_list") else list(records)
    for index, r in enumerate(rows):
        if r.get("answer") is None:
            raise ValueError(
                f"record {index} (id {r.get('id')!r}, task {r.get('task')!r}) "
                "is open: no answer to score"
            )
    replies = generate_replies(
        model,
        tokenizer,
        [prompt_of(r["messages"]) for r in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        context=context,
    )
    # parsed from the Python lists: in a pandas 3 string column a missing reply is
    # NaN, not None
    parsed = [
        parse(r["task"], reply) if reply is not None else None
        for r, reply in zip(rows, replies)
    ]
    frame = pd.DataFrame(
        {
            "id": [r["id"] for r in rows],
            "task": [r["task"] for r in rows],
            "answer": [r["answer"] for r in rows],
            "reply": replies,
            "fits": [reply is not None for reply in replies],
            "parsed": parsed,
            "format_ok": [p is not None for p in parsed],
            "correct": [
                p is not None and p == r["answer"] for r, p in zip(rows, parsed)
            ],
        }
    )
    return frame


def accuracy_ci(
    correct, baseline=None, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Accuracy (mean of 0/1 ``correct``) with a 95 % percentile-bootstrap interval,
    or, with ``baseline`` on the *same* items, the paired difference
    ``mean(correct − baseline)`` and its interval.

    ``baseline`` is another system's 0/1 correctness, or each item's probability of
    being right (a random guesser's 1/k, :func:`random_valid_accuracy`). Items are
    resampled with ``metrics.bootstrap_ci``.
    """
    from book_utils.metrics import bootstrap_ci

    correct = np.asarray(correct, dtype=float)
    if baseline is None:
        base = np.zeros_like(correct)
    else:
        base = np.asarray(baseline, dtype=float)
    if base.shape != correct.shape:
        raise ValueError(
            f"baseline has {base.shape} values for {correct.shape} items: "
            "score the same items"
        )
    index = np.arange(len(correct))

    def metric(_, items):
        return float(np.mean(correct[items] - base[items]))

    return bootstrap_ci(index, index, metric=metric, n_boot=n_boot, seed=seed)


def options_of(record) -> tuple[str, ...]:
    """The answers a closed-task record allows: the plays its prompt lists for
    ``play`` (four of eight), the task's label set otherwise
    (``sft_data.CLOSED_TASKS``)."""
    import re

    task = record.get("task")
    if task not in CLOSED_TASKS:
        raise ValueError(
            f"record {record.get('id')!r}: task {task!r} is not closed; "
            f"closed: {list(CLOSED_TASKS)}"
        )
    if task != "play":
        return CLOSED_TASKS[task]
    title = "|".join(re.escape(t) for t in CLOSED_TASKS["play"])
    prompt = prompt_of(record["messages"])[-1]["content"]
    listed = re.search(f"(?:{title})(?:, (?:{title}))+", prompt)
    if listed is None:
        raise ValueError(f"record {record.get('id')!r}: no list of plays in its prompt")
    return tuple(listed.group(0).split(", "))


def random_valid_accuracy(records) -> np.ndarray:
    """Per record, the chance that a guesser who answers a uniformly random *allowed*
    label is right: 1/k for k = ``len(options_of(record))``. Its mean is the
    random-valid-label baseline of chapter 4c: the score of a model that learned the
    answer format and nothing else."""
    rows = records.to_list() if hasattr(records, "to_list") else list(records)
    return np.array([1.0 / len(options_of(r)) for r in rows])


def score_table(frame, *, n_boot: int = 1000, seed: int = 0):
    """Per task and overall: items, items that fit the context, format compliance
    (share of replies that parse), exact-match accuracy with its 95 % bootstrap
    interval. Items that do not fit count as wrong and unparsed. When ``frame`` has a
    ``random_valid`` column (:func:`random_valid_accuracy`), also that baseline and the
    paired gain over it, ``gain`` with its interval ``gain_low``..``gain_high``."""
    import pandas as pd

    rows = []
    groups = [(task, g) for task, g in frame.groupby("task", sort=True)]
    for task, g in groups + [("all", frame)]:
        ci = accuracy_ci(g["correct"].to_numpy(), n_boot=n_boot, seed=seed)
        row = {
            "task": task,
            "n": len(g),
            "fits": int(g["fits"].sum()),
            "format_ok": float(g["format_ok"].mean()),
            "accuracy": ci["estimate"],
            "low": ci["low"],
            "high": ci["high"],
        }
        if "random_valid" in g:
            gain = accuracy_ci(
                g["correct"].to_numpy(),
                g["random_valid"].to_numpy(),
                n_boot=n_boot,
                seed=seed,
            )
            row.update(
                random_valid=float(g["random_valid"].mean()),
                gain=gain["estimate"],
                gain_low=gain["low"],
                gain_high=gain["high"],
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("task")


def closed_records(
    split,
    tasks: Iterable[str] | None = None,
    limit_per_task: int | None = None,
    seed: int = 0,
):
    """The closed-task records of a split (``answer`` not None), optionally only
    ``tasks`` and at most ``limit_per_task`` per task (a seeded sample), as a list of
    dicts in a stable order."""
    rows = split.to_list() if hasattr(split, "to_list") else list(split)
    # once: ``tasks`` may be a one-pass iterator
    wanted = None if tasks is None else set(tasks)
    rows = [
        r
        for r in rows
        if r.get("answer") is not None and (wanted is None or r["task"] in wanted)
    ]
    if limit_per_task is None:
        return rows
    rng = np.random.default_rng(seed)
    out = []
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        keep = sorted(rng.permutation(len(mine))[:limit_per_task].tolist())
        out.extend(mine[i] for i in keep)
    return out


def fits_context(records, tokenizer, context: int, *, reserve: int = 0) -> list[dict]:
    """The records whose full conversation (prompt and answer, with template) fits
    ``context − reserve`` tokens of ``tokenizer``."""
    out = []
    for r in records:
        text = tokenizer.apply_chat_template(r["messages"], tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= (
            context - reserve
        ):
            out.append(r)
    return out
