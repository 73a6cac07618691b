"""The whole dataset build: leak-free splits by source item (:func:`split_of`,
:func:`assert_no_leakage`), the sources each task reads, balanced sampling,
:func:`build_sft_records` (items -> cleaning -> split -> balanced records ->
validation, with a cleaning report) and :func:`fresh_records` (more records from the
items SFT leaves unused: chapter 4c.5's preference prompts). Records per task and
split come from :data:`book_utils.sizes.SFT_RECORDS`.

Taught in chapter 4b, book/04_sft/03_sft_data.ipynb ("Splits without leaks",
"The build").
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

import book_utils.sft_data.sources as sources
from book_utils.sft_data.cleaning import clean_items, exact_key
from book_utils.sft_data.schema import (
    CLOSED_TASKS,
    SPLIT_FRACTIONS,
    SPLITS,
    TASKS,
    validate_records,
)
from book_utils.sft_data.sources import CLEANING
from book_utils.sft_data.tasks import make_record
from book_utils.sizes import CHITCHAT_LIMIT, SFT_RECORDS, for_profile

# --- splits --------------------------------------------------------------------------


def split_of(
    source_id: str, seed: int = 0, fractions: Mapping[str, float] = SPLIT_FRACTIONS
) -> str:
    """The split of a source item: a hash of ``seed`` and ``source_id`` mapped to
    [0, 1) and cut by ``fractions``. Every record made from the same item lands in the
    same split, whatever else the dataset contains, so no review or passage is ever in
    two splits."""
    digest = hashlib.blake2b(
        f"{seed}:{source_id}".encode("utf-8"), digest_size=8
    ).digest()
    u = int.from_bytes(digest, "big") / 2**64
    edge = 0.0
    for split, share in fractions.items():
        edge += share
        if u < edge:
            return split
    return list(fractions)[-1]


def assert_no_leakage(
    splits: Mapping[str, Iterable[Mapping]], min_prompt_chars: int = 30
) -> None:
    """Raise ``AssertionError`` if a ``source_id``, or a user prompt of
    ``min_prompt_chars`` or more (after :func:`exact_key`), occurs in two splits. Short
    prompts ("hi", "how are you?") recur in any chat corpus and are not leaks; a
    review, a passage or a long question is."""
    owners: dict[tuple[str, str], str] = {}
    for split, records in splits.items():
        for record in records:
            prompt = exact_key(
                " ".join(
                    m["content"] for m in record["messages"] if m["role"] == "user"
                )
            )
            keys = [("source_id", record["source_id"])]
            if len(prompt) >= min_prompt_chars:
                keys.append(("prompt", prompt))
            for key in keys:
                other = owners.setdefault(key, split)
                if other != split:
                    raise AssertionError(
                        f"leak: {key[0]} {key[1][:80]!r} is in both {other!r} and "
                        f"{split!r}"
                    )


# --- the whole pipeline --------------------------------------------------------------

#: The sources each task draws its items from. A review may serve sentiment, rating
#: and recommend, always in the same split: negative reviews are too rare to give each
#: task its own.
TASK_SOURCES = {
    "sentiment": ("reviews",),
    "rating": ("reviews",),
    "recommend": ("reviews",),
    "play": ("shakespeare",),
    "continue": ("shakespeare",),
    "chat": ("chatterbot", "chitchat"),
    "ifbench": ("ifbench",),
}
FILL_ORDER = TASKS


def collect_items(profile: str) -> dict[str, list[dict]]:
    """All raw items per source (the ``ci`` profile reads only the first
    :data:`book_utils.sizes.CHITCHAT_LIMIT` chit-chat conversations). The readers are
    looked up in :mod:`book_utils.sft_data.sources` at call time."""
    return {
        "reviews": sources.review_items(),
        "shakespeare": sources.shakespeare_items(),
        "chatterbot": sources.chatterbot_items(),
        "chitchat": sources.chitchat_items(limit=for_profile(CHITCHAT_LIMIT, profile)),
        "ifbench": sources.ifbench_items(),
    }


def _take(task: str, pool: list[dict], n: int, used: set[str], seed: int) -> list[dict]:
    """Up to ``n`` records of ``task`` from ``pool`` (already in a seeded order),
    balanced over the answers of a closed task (equal quotas; a short answer class
    leaves its quota unfilled), each item used once."""
    answers = CLOSED_TASKS.get(task)
    quota = {a: n // len(answers) for a in answers} if answers else None
    out = []
    for item in pool:
        if len(out) >= n or (quota and not any(quota.values())):
            break
        if item["source_id"] in used:
            continue
        record = make_record(task, item, seed)
        if record is None:
            continue
        if quota is not None:
            if quota[record["answer"]] == 0:
                continue
            quota[record["answer"]] -= 1
        used.add(item["source_id"])
        out.append(record)
    return out


def _split_pools(
    items: Mapping[str, list[dict]], seed: int
) -> tuple[dict[str, dict[str, list[dict]]], dict]:
    """Clean every source, split its items by source item and shuffle each split's
    pool with ``seed``: ``({split: {source: items}}, cleaning report)``."""
    report = {"cleaning": {}, "items_raw": {}, "items_clean": {}}
    clean: dict[str, list[dict]] = {}
    for source, raw in items.items():
        lo, hi = CLEANING[source]
        clean[source], removed = clean_items(raw, min_chars=lo, max_chars=hi)
        report["items_raw"][source] = len(raw)
        report["items_clean"][source] = len(clean[source])
        report["cleaning"][source] = dict(sorted(removed.items()))
    rng = np.random.default_rng(seed)
    by_split: dict[str, dict[str, list[dict]]] = {s: defaultdict(list) for s in SPLITS}
    for source, kept in clean.items():
        for item in kept:
            by_split[split_of(item["source_id"], seed)][source].append(item)
    for split in SPLITS:
        for source in sorted(by_split[split]):
            pool = by_split[split][source]
            by_split[split][source] = [pool[i] for i in rng.permutation(len(pool))]
    return by_split, report


def _fill(
    pools: Mapping[str, list[dict]],
    sizes: Mapping[str, int],
    seed: int,
    skip: frozenset = frozenset(),
) -> list[dict]:
    """Records of each task in :data:`FILL_ORDER`, ``sizes[task]`` of them, from one
    split's ``pools``, never from an item in ``skip``."""
    out = []
    for task in FILL_ORDER:
        if not sizes.get(task):
            continue
        pool = [it for src in TASK_SOURCES[task] for it in pools[src]]
        if len(TASK_SOURCES[task]) > 1:  # interleave the sources of a mixed task
            order = np.random.default_rng(seed + 1).permutation(len(pool))
            pool = [pool[i] for i in order]
        out += _take(task, pool, sizes[task], set(skip), seed)
    return out


def _build(profile, seed, items):
    """The SFT records, the cleaning report and the shuffled pools they came from."""
    sizes = for_profile(SFT_RECORDS, profile)
    items = collect_items(profile) if items is None else items
    by_split, report = _split_pools(items, seed)
    records = {
        split: _fill(by_split[split], {t: n[i] for t, n in sizes.items()}, seed)
        for i, split in enumerate(SPLITS)
    }
    for split in SPLITS:
        validate_records(records[split])
    assert_no_leakage(records)
    return records, report, by_split


def build_sft_records(
    profile: str, seed: int = 0, items: Mapping[str, list[dict]] | None = None
) -> tuple[dict[str, list[dict]], dict]:
    """The whole pipeline: items -> cleaning -> split by source item -> balanced
    sampling -> validation.

    Records per task and split, (train, validation, test), are
    :data:`book_utils.sizes.SFT_RECORDS` for ``profile``; closed tasks are balanced
    over their answers and a source item is used at most once per task. Returns
    ``({split: records}, report)`` where ``report`` has the cleaning counts per source
    (``report["cleaning"][source][reason]``) and the item counts before and after
    cleaning. Deterministic: items are sorted by ``source_id`` and shuffled with
    ``seed``. Taught in chapter 4b.
    """
    records, report, _ = _build(profile, seed, items)
    return records, report


def fresh_records(
    sizes: Mapping[str, Mapping[str, int]],
    *,
    profile: str,
    seed: int = 0,
    items: Mapping[str, list[dict]] | None = None,
) -> dict[str, list[dict]]:
    """New records of the SFT tasks from items that the SFT dataset
    (:func:`build_sft_records` with the same ``profile`` and ``seed``) does not use:
    prompts of the same distribution and split that the SFT model never trained on
    (chapter 4c.5 collects preference pairs on them).

    ``sizes`` maps a split to the records per task wanted from it, e.g.
    ``{"train": {"sentiment": 600, "chat": 1500}}``; closed tasks are balanced over
    their answers, as in SFT (a rare answer may leave its quota short). Returns
    ``{split: records}``; the records pass :func:`validate_records` and no item
    serves two splits (:func:`split_of`)."""
    for split, per_task in sizes.items():
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        unknown = sorted(set(per_task) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; the tasks are {list(TASKS)}")
    sft, _, by_split = _build(profile, seed, items)
    out = {}
    for split, per_task in sizes.items():
        used = frozenset(r["source_id"] for r in sft[split])
        out[split] = _fill(by_split[split], per_task, seed, skip=used)
        validate_records(out[split])
    return out
