"""Building supervised fine-tuning (SFT, 监督微调) data: records, templates, cleaning,
validation, loss masks.

Chapter 4b, "Building SFT data" (book/04_sft/03_sft_data.ipynb), teaches the craft
with this package and produces the dataset that chapter 4c instruction-tunes on. The
submodules, in the order the chapter uses them:

- :mod:`~book_utils.sft_data.schema` (chapter 4b): the record contract
  (:data:`CLOSED_TASKS`, :data:`TASKS`, :data:`SOURCES`, chat roles): one JSON line
  per example with ``id``, ``task``, ``source``, ``source_id``, chat ``messages`` and,
  for closed tasks, a checkable ``answer``; the validator (:func:`validate_record`,
  :func:`validate_records`); :func:`parse_answer`, the stated parser chapter 4c scores
  exact match with;
- :mod:`~book_utils.sft_data.sources` (chapter 4b): clothing reviews, Shakespeare,
  dialogue corpora (ChatterBot, chit-chat) and IFBench read into items, with the
  per-source length limits (:data:`CLEANING`);
- :mod:`~book_utils.sft_data.cleaning` (chapter 4b): normalisation, garbage and
  length filters, exact and near-duplicate removal with MinHash over character 5-gram
  shingles (:func:`minhash_signatures`, :func:`near_duplicate_clusters`,
  :func:`clean_items`);
- :mod:`~book_utils.sft_data.tasks` (chapter 4b): FLAN-style builders that turn
  labelled items into instructions with several phrasings (templates) per task
  (:func:`make_record`);
- :mod:`~book_utils.sft_data.build` (chapter 4b): leak-free splits by source item
  (:func:`split_of`, :func:`assert_no_leakage`), balancing, the whole build
  (:func:`build_sft_records`) and :func:`fresh_records` (more records of a split
  from the items SFT does not use; chapter 4c.5's preference prompts);
- :mod:`~book_utils.sft_data.storage` (chapters 4b and 4c): strict JSONL reading
  (:func:`read_jsonl`, :func:`validate_jsonl`), atomic writing, and
  :func:`load_or_build_sft_dataset`, which caches the result as JSONL under
  ``artifact_dir("sft-data")``;
- :mod:`~book_utils.sft_data.masks` (chapters 4b and 4c): loss masks (损失掩码):
  :func:`tokenize_for_sft` puts label :data:`IGNORE_INDEX` (-100) on every
  non-assistant token, for any chat template, by rendering prefixes;
  :func:`template_assistant_mask` is the independent check; packing (打包) vs padding
  (填充): :func:`pack_examples`, :func:`block_diagonal_causal_mask`,
  :func:`padding_waste`.

Records per task and split, and the chit-chat limit of the ``ci`` profile, are
:data:`book_utils.sizes.SFT_RECORDS` and :data:`book_utils.sizes.CHITCHAT_LIMIT`.
"""

from book_utils.sft_data.build import (
    FILL_ORDER,
    TASK_SOURCES,
    assert_no_leakage,
    build_sft_records,
    collect_items,
    fresh_records,
    split_of,
)
from book_utils.sft_data.cleaning import (
    clean_items,
    exact_key,
    garbage_reason,
    jaccard,
    minhash_signatures,
    near_duplicate_clusters,
    normalize_text,
    shingles,
)
from book_utils.sft_data.masks import (
    IGNORE_INDEX,
    assistant_char_spans,
    block_diagonal_causal_mask,
    chatml_with_generation_markers,
    mask_html,
    pack_examples,
    padding_waste,
    template_assistant_mask,
    token_table,
    tokenize_for_sft,
)
from book_utils.sft_data.schema import (
    CLOSED_TASKS,
    FIELDS,
    MAX_CONTENT_CHARS,
    MAX_MESSAGES,
    MAX_RECORD_CHARS,
    OPEN_TASKS,
    PLAYS,
    ROLES,
    SOURCES,
    SPLIT_FRACTIONS,
    SPLITS,
    TASKS,
    TEMPLATE_TOKENS,
    SFTValidationError,
    parse_answer,
    validate_record,
    validate_records,
)
from book_utils.sft_data.sources import (
    CHAT_MAX_CHARS,
    CLEANING,
    IFBENCH_MAX_CHARS,
    MAX_TURNS,
    PASSAGE_MAX_CHARS,
    REVIEW_MAX_CHARS,
    chatterbot_items,
    chitchat_items,
    ifbench_items,
    review_items,
    shakespeare_items,
    speeches,
)
from book_utils.sft_data.storage import (
    SFT_ARTIFACT,
    dataset_card,
    load_or_build_sft_dataset,
    load_sft_dataset,
    load_sft_report,
    read_jsonl,
    save_sft_dataset,
    validate_jsonl,
    write_jsonl_atomic,
)
from book_utils.sft_data.tasks import (
    SYSTEM_PROMPTS,
    TEMPLATES,
    make_record,
    review_answer,
)

__all__ = [
    # schema
    "SOURCES",
    "ROLES",
    "SPLITS",
    "FIELDS",
    "PLAYS",
    "CLOSED_TASKS",
    "OPEN_TASKS",
    "TASKS",
    "TEMPLATE_TOKENS",
    "MAX_CONTENT_CHARS",
    "MAX_RECORD_CHARS",
    "MAX_MESSAGES",
    "SPLIT_FRACTIONS",
    "SFTValidationError",
    "validate_record",
    "validate_records",
    "parse_answer",
    # sources
    "REVIEW_MAX_CHARS",
    "PASSAGE_MAX_CHARS",
    "CHAT_MAX_CHARS",
    "IFBENCH_MAX_CHARS",
    "MAX_TURNS",
    "CLEANING",
    "review_items",
    "speeches",
    "shakespeare_items",
    "chatterbot_items",
    "chitchat_items",
    "ifbench_items",
    # cleaning
    "normalize_text",
    "garbage_reason",
    "exact_key",
    "shingles",
    "jaccard",
    "minhash_signatures",
    "near_duplicate_clusters",
    "clean_items",
    # tasks
    "TEMPLATES",
    "SYSTEM_PROMPTS",
    "review_answer",
    "make_record",
    # build
    "split_of",
    "assert_no_leakage",
    "TASK_SOURCES",
    "FILL_ORDER",
    "collect_items",
    "build_sft_records",
    "fresh_records",
    # storage
    "read_jsonl",
    "validate_jsonl",
    "write_jsonl_atomic",
    "SFT_ARTIFACT",
    "save_sft_dataset",
    "load_sft_dataset",
    "load_or_build_sft_dataset",
    "load_sft_report",
    "dataset_card",
    # masks
    "IGNORE_INDEX",
    "assistant_char_spans",
    "tokenize_for_sft",
    "template_assistant_mask",
    "chatml_with_generation_markers",
    "token_table",
    "mask_html",
    "pack_examples",
    "block_diagonal_causal_mask",
    "padding_waste",
]
