"""Records on disk: strict JSONL reading and validated atomic writing, the dataset
saved as ``{split}.jsonl`` plus a cleaning report, and
:func:`load_or_build_sft_dataset`, which caches the book's SFT dataset under
``artifact_dir("sft-data")``; :func:`dataset_card` counts its records.

Taught in chapter 4b, book/04_sft/03_sft_data.ipynb ("Validation", "The build");
chapter 4c (book/04_sft/04_instruction_tuning.ipynb and the notebooks after it) loads
the dataset with :func:`load_or_build_sft_dataset`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from book_utils.sft_data.build import build_sft_records
from book_utils.sft_data.schema import (
    SPLITS,
    TASKS,
    SFTValidationError,
    validate_records,
)

SFT_ARTIFACT = "sft-data"


def read_jsonl(path: Path | str) -> list[dict]:
    """Read a JSONL file strictly: raises :class:`SFTValidationError` listing every line
    that is not valid UTF-8 or not a JSON object, by line number
    (``"line 7: not valid JSON ..."``). What the usual writers add is accepted: a UTF-8
    byte-order mark at the start, and blank lines (skipped)."""
    raw = Path(path).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # the BOM some editors (and Excel) put first
        raw = raw[3:]
    records, problems = [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            problems.append(
                (
                    number,
                    f"line {number}: not valid UTF-8 "
                    f"({error.reason} at byte {error.start})",
                )
            )
            continue
        try:
            records.append(json.loads(text))
        except json.JSONDecodeError as error:
            problems.append(
                (
                    number,
                    f"line {number}: not valid JSON "
                    f"({error.msg} at column {error.colno})",
                )
            )
    if problems:
        shown = "; ".join(p for _, p in problems[:10])
        raise SFTValidationError(
            f"{len(problems)} unreadable lines in {path}; first: {shown}", problems
        )
    return records


def validate_jsonl(path: Path | str, max_report: int = 10) -> int:
    """Validate every record of a JSONL file (see :func:`validate_records`); returns
    the number of records."""
    return validate_records(read_jsonl(path), max_report=max_report)


def write_jsonl_atomic(records: Sequence[Mapping], path: Path | str) -> Path:
    """Validate ``records`` then write them as UTF-8 JSONL through a temporary file and
    a rename.

    Nothing is written when any record is bad (the :class:`SFTValidationError` lists
    them all).
    """
    from book_utils.cache import atomic_write_text

    validate_records(records)
    text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)
    return Path(path)


def _features():
    from datasets import Features, Value

    return Features(
        {
            "id": Value("string"),
            "task": Value("string"),
            "source": Value("string"),
            "source_id": Value("string"),
            "messages": [{"role": Value("string"), "content": Value("string")}],
            "answer": Value("string"),
        }
    )


def save_sft_dataset(
    records: Mapping[str, list[dict]], report: Mapping, folder: Path | str
) -> None:
    """Write ``{split}.jsonl`` (through ``datasets``' ``to_json``) and ``report.json``
    into ``folder``, after validating every record; call it inside
    :func:`book_utils.cache.atomic_dir`."""
    from datasets import Dataset

    from book_utils.cache import atomic_write_text

    folder = Path(folder)
    for split, rows in records.items():
        validate_records(rows)
        Dataset.from_list(list(rows), features=_features()).to_json(
            folder / f"{split}.jsonl", force_ascii=False
        )
    atomic_write_text(folder / "report.json", json.dumps(report, indent=1))


def load_sft_dataset(folder: Path | str):
    """Read a saved SFT dataset back as a ``DatasetDict``, validating every record of
    every split."""
    from datasets import Dataset, DatasetDict

    folder = Path(folder)
    out = {}
    for split in SPLITS:
        rows = read_jsonl(folder / f"{split}.jsonl")
        validate_records(rows)
        out[split] = Dataset.from_list(rows, features=_features())
    return DatasetDict(out)


def load_or_build_sft_dataset(profile: str, seed: int = 0):
    """The book's SFT dataset for ``profile`` as a ``DatasetDict`` (train/validation/
    test), from the artifact cache or built (about a minute in ``full``, seconds in
    ``ci``) and saved atomically as JSONL first. Built in chapter 4b; chapter 4c trains
    on it. ``load_sft_report(profile)`` returns the cleaning report of the same
    build."""
    from book_utils.cache import artifact_dir, load_or_build

    def build(folder: Path) -> None:
        records, report = build_sft_records(profile, seed=seed)
        save_sft_dataset(records, report, folder)

    return load_or_build(artifact_dir(SFT_ARTIFACT, profile), build, load_sft_dataset)


def load_sft_report(profile: str) -> dict:
    """The cleaning report written with the cached dataset of ``profile`` (build it
    first with :func:`load_or_build_sft_dataset`)."""
    from book_utils.cache import artifact_dir

    folder = artifact_dir(SFT_ARTIFACT, profile)
    return json.loads((folder / "report.json").read_text())


def dataset_card(dataset) -> "pd.DataFrame":  # noqa: F821
    """Records per task (rows) and split (columns) of a ``DatasetDict``, with
    totals."""
    import pandas as pd

    counts = {split: Counter(dataset[split]["task"]) for split in dataset}
    tasks = [t for t in TASKS if any(t in c for c in counts.values())]
    table = pd.DataFrame(counts).reindex(tasks).fillna(0).astype(int)
    table.loc["total"] = table.sum()
    return table
