"""SFT data for training: chat records tokenized with the prompt masked, the padding
collator, the task mixture, replayed pretraining text, and the token budget of a record.
Chapter 4c, book/04_sft/04_instruction_tuning.ipynb (replay: chapter 4c.2,
book/04_sft/05_sft_ablations.ipynb)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from book_utils.checks import positive_int
from book_utils.sft_data.masks import IGNORE_INDEX, tokenize_for_sft
from book_utils.sizes import SFT_CONTEXT, for_profile


def tokenize_records(
    records,
    tokenizer,
    max_length: int,
    *,
    mask_prompt: bool = True,
    tokenize_fn: Callable | None = None,
    keep_columns: Sequence[str] = ("id", "task"),
):
    """Tokenize chat records for SFT and drop the ones longer than ``max_length``
    tokens (chapter 4c).

    ``records`` is a ``datasets.Dataset`` (or list of dicts) in the SFT data contract
    (a ``messages`` column). Each conversation goes through
    ``tokenize_fn(tokenizer, messages, max_length)`` (default:
    ``sft_data.tokenize_for_sft``, labels -100 on every non-assistant token). With
    ``mask_prompt=False`` the labels are the input ids everywhere: the *unmasked* loss
    the chapter compares against. A record longer than the context is dropped, never
    truncated (a cut answer teaches a wrong answer).

    Returns ``(dataset, n_dropped)``: a ``Dataset`` with ``input_ids``,
    ``attention_mask``, ``labels`` and the ``keep_columns`` that exist, and the number
    of records dropped for length.
    """
    from datasets import Dataset

    max_length = positive_int("max_length", max_length)
    tokenize_fn = tokenize_fn or tokenize_for_sft
    rows = records if not isinstance(records, Dataset) else records.to_list()
    out, dropped = [], 0
    for index, record in enumerate(rows):
        if not isinstance(record, dict) or "messages" not in record:
            raise ValueError(
                f"record {index} has no 'messages' field "
                "(see the SFT data contract, chapter 4b)"
            )
        encoded = tokenize_fn(tokenizer, record["messages"], 1_000_000)
        ids, labels = list(encoded["input_ids"]), list(encoded["labels"])
        if len(ids) != len(labels):
            raise ValueError(
                f"record {index}: {len(ids)} input ids but {len(labels)} labels"
            )
        if len(ids) > max_length:
            dropped += 1
            continue
        if all(label == IGNORE_INDEX for label in labels):
            raise ValueError(
                f"record {index} (id {record.get('id')!r}) has no assistant token "
                "to train on"
            )
        row = {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "labels": labels if mask_prompt else list(ids),
        }
        row.update({c: record[c] for c in keep_columns if c in record})
        out.append(row)
    if not out:
        raise ValueError(
            f"all {dropped} records are longer than max_length={max_length} tokens: "
            "nothing left to train on "
            "(use a model with a longer context, or shorter records)"
        )
    return Dataset.from_list(out), dropped


class SFTCollator:
    """Pad a list of tokenized examples into a batch: ``input_ids`` with the pad id,
    ``attention_mask`` with 0, ``labels`` with -100 (so padding never counts in the
    loss). Right padding, as training wants; chapter 4c.

    Equivalent to
    ``transformers.DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)``; extra
    columns (``id``, ``task``) are dropped.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError(
                "pad_token_id is None: the tokenizer needs a pad token "
                "(set tokenizer.pad_token)"
            )
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            longest = math.ceil(longest / multiple) * multiple
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            ids = list(f["input_ids"])
            pad = longest - len(ids)
            mask = list(f.get("attention_mask", [1] * len(ids)))
            labels = list(f.get("labels", ids))
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["attention_mask"].append(mask + [0] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def mix_tasks(train, repeats: Mapping[str, int], *, seed: int = 0):
    """The SFT mixture (数据配比): each record of a task in ``repeats`` appears that
    many times (a whole number >= 1; other tasks once), then the set is shuffled with
    ``seed``. Chapter 4c up-weights the task whose answers must be memorised, so it
    gets more passes within the same number of steps."""
    from datasets import concatenate_datasets

    tasks = set(train["task"])
    unknown = sorted(set(repeats) - tasks)
    if unknown:
        raise ValueError(
            f"no records of task(s) {unknown} to repeat; the data has {sorted(tasks)}"
        )
    parts = [train]
    for task, times in repeats.items():
        positive_int(f"repeats[{task!r}]", times)
        mine = train.filter(lambda r, task=task: r["task"] == task)
        parts += [mine] * (times - 1)
    return concatenate_datasets(parts).shuffle(seed=seed)


def mixture_table(train):
    """Per task of tokenized SFT data: records, labelled tokens (the targets the loss
    sees), and the task's share of the loss under the per-token mean
    (:func:`~book_utils.instruction_tuning.loss.masked_nll`: its share of labelled
    tokens) and under the per-example mean
    (:func:`~book_utils.instruction_tuning.loss.per_example_nll`: its share of
    records). Chapter 4c."""
    import pandas as pd

    targets = [
        sum(label != IGNORE_INDEX for label in labels[1:]) for labels in train["labels"]
    ]
    frame = pd.DataFrame({"task": train["task"], "labelled tokens": targets})
    table = frame.groupby("task").agg(
        records=("task", "size"), **{"labelled tokens": ("labelled tokens", "sum")}
    )
    tokens = table["labelled tokens"]
    table["tokens per record"] = tokens / table["records"]
    table["loss share, per token"] = tokens / tokens.sum()
    table["loss share, per example"] = table["records"] / table["records"].sum()
    return table.sort_values("records", ascending=False)


def replay_mix(
    sft_train,
    lm_blocks,
    fraction: float,
    *,
    max_length: int | None = None,
    seed: int = 0,
):
    """Mix pretraining text into SFT training data (replay, 回放): a ``fraction`` of the
    mixed set is plain LM blocks.

    ``lm_blocks`` holds token blocks of the *pretraining* corpus (an ``input_ids``
    column, e.g. the train split of ``pretraining.shakespeare_lm_data``); each becomes
    an example whose labels are all its tokens (ordinary next-token loss), cut to
    ``max_length``. With ``fraction`` f and n SFT examples, round(n·f/(1−f)) blocks are
    added (sampled without replacement, repeating only if the corpus is too small),
    then the whole set is shuffled. Chapter 4c uses it against catastrophic
    forgetting.
    """
    from datasets import Dataset, concatenate_datasets

    if not 0 <= fraction < 1:
        raise ValueError(
            "fraction must be in [0, 1) (the share of replayed blocks), "
            f"got {fraction!r}"
        )
    if fraction == 0:
        return sft_train
    n_replay = round(len(sft_train) * fraction / (1 - fraction))
    rng = np.random.default_rng(seed)
    n_blocks = len(lm_blocks)
    if n_blocks == 0:
        raise ValueError(
            "lm_blocks is empty: pass the pretraining corpus as token blocks"
        )
    rounds = math.ceil(n_replay / n_blocks)
    picks = np.concatenate([rng.permutation(n_blocks) for _ in range(rounds)])
    rows = []
    for i in picks[:n_replay]:
        ids = [int(t) for t in lm_blocks[int(i)]["input_ids"]][:max_length]
        rows.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}
        )
    columns = ["input_ids", "attention_mask", "labels"]
    replay = Dataset.from_list(rows)
    mixed = concatenate_datasets([sft_train.select_columns(columns), replay])
    return mixed.shuffle(seed=seed)


def prompt_of(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) its final assistant turn: what the
    model sees at inference."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError(
            "a record's messages must end with an assistant turn (the reference answer)"
        )
    return list(messages[:-1])


def context_length(model) -> int:
    """The model's context window in tokens (``max_position_embeddings``)."""
    return int(model.config.max_position_embeddings)


def sft_context(model, *, profile: str) -> int:
    """Longest record (prompt, answer and template tokens) the chapter trains and
    evaluates our base model on.

    ``full``: the model's context (256 tokens). ``ci``: the toy base model has 64
    positions and a 512-token vocabulary, which no record fits, so the ``ci`` profile
    lets it read ``sizes.SFT_CONTEXT["ci"]`` (256) positions (rotary positions have no
    hard limit; ``ci`` only checks that the code runs, its numbers mean nothing).
    """
    budget = for_profile(SFT_CONTEXT, profile)
    if budget is None:
        return context_length(model)
    return max(context_length(model), budget)
