"""Building supervised fine-tuning (SFT, 监督微调) data: records, templates, cleaning, validation, loss masks.

Chapter 4b, "Building SFT data", teaches the craft with this module and produces the dataset that chapter 4c
instruction-tunes on. The pieces, in the order the chapter uses them:

- the record contract (:data:`CLOSED_TASKS`, :data:`TASKS`, :data:`SOURCES`): one JSON line per example with
  ``id``, ``task``, ``source``, ``source_id``, chat ``messages`` and, for closed tasks, a checkable ``answer``;
- FLAN-style builders that turn labelled sources into instructions with several phrasings (templates) per
  task: clothing reviews (sentiment, rating, recommend), Shakespeare (which play, continue the passage),
  dialogue corpora (multi-turn chat) and IFBench (constrained instructions);
- cleaning: normalisation, garbage and length filters, exact and near-duplicate removal with MinHash over
  character 5-gram shingles (:func:`minhash_signatures`, :func:`near_duplicate_clusters`), balancing;
- leak-free splits by source item (:func:`split_of`, :func:`assert_no_leakage`);
- a validator (:func:`validate_record`, :func:`validate_records`, :func:`validate_jsonl`) and atomic JSONL
  writing; :func:`load_or_build_sft_dataset` caches the result as JSONL under ``artifact_dir("sft-data")``;
- :func:`parse_answer`, the stated parser chapter 4c scores exact match with;
- loss masks (损失掩码): :func:`tokenize_for_sft` puts label -100 on every non-assistant token, for any chat
  template, by rendering prefixes; :func:`template_assistant_mask` is the independent check;
- packing (打包) vs padding (填充): :func:`pack_examples`, :func:`block_diagonal_causal_mask`,
  :func:`padding_waste`.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

# --- the contract ------------------------------------------------------------------------------------------

#: Where records come from (the ``source`` field).
SOURCES = ("reviews", "shakespeare", "chatterbot", "chitchat", "ifbench")
ROLES = ("system", "user", "assistant")
SPLITS = ("train", "validation", "test")
FIELDS = ("id", "task", "source", "source_id", "messages", "answer")

#: The plays of the "which play" task, file stem -> title as the model must answer it. Four are the plays
#: chapter 3's base model never saw in pretraining (macbeth, twelfth_night, hamlet, tempest); four it did.
PLAYS = {
    "hamlet": "Hamlet",
    "julius_caesar": "Julius Caesar",
    "macbeth": "Macbeth",
    "midsummer_nights_dream": "A Midsummer Night's Dream",
    "othello": "Othello",
    "romeo_and_juliet": "Romeo and Juliet",
    "tempest": "The Tempest",
    "twelfth_night": "Twelfth Night",
}

#: For each closed task, the answers a reply may be parsed to (the ``answer`` field is one of them).
CLOSED_TASKS: dict[str, tuple[str, ...]] = {
    "sentiment": ("positive", "negative"),
    "recommend": ("yes", "no"),
    "rating": ("1", "2", "3", "4", "5"),
    "play": tuple(PLAYS.values()),
}
#: Open tasks have no single checkable answer (``answer`` is null).
OPEN_TASKS = ("continue", "chat", "ifbench")
TASKS = tuple(CLOSED_TASKS) + OPEN_TASKS

#: Strings that belong to chat templates, never to content: a user who types them could forge turns.
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>")

#: Length limits the validator enforces (characters; token limits are the model's business).
MAX_CONTENT_CHARS = 4000
MAX_RECORD_CHARS = 8000
MAX_MESSAGES = 16

#: Share of source items per split; the split of an item depends only on its ``source_id``.
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}


class SFTValidationError(ValueError):
    """Records break the SFT data contract. ``problems`` lists every ``(record index, message)`` found."""

    def __init__(self, message: str, problems: list[tuple[int, str]]):
        super().__init__(message)
        self.problems = problems


# --- validation -------------------------------------------------------------------------------------------


def _check_text(value, field: str, where: str, problems: list[str], max_chars: int = MAX_CONTENT_CHARS) -> None:
    if not isinstance(value, str):
        problems.append(f"{where}, field {field}: must be a string, got {type(value).__name__}")
        return
    if not value.strip():
        problems.append(f"{where}, field {field}: empty string")
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        problems.append(f"{where}, field {field}: not valid UTF-8 (contains a lone surrogate)")
    if len(value) > max_chars:
        problems.append(f"{where}, field {field}: too long ({len(value)} characters > {max_chars})")


def validate_record(record, index: int = 0) -> list[str]:
    """Every way ``record`` breaks the SFT contract, as ``"record 17, field messages[2].content: ..."`` strings.

    Checks the schema (exactly :data:`FIELDS`, types, known task and source), the role order (an optional
    system message, then user/assistant alternating, ending with assistant), non-empty valid-UTF-8 strings,
    length limits, no :data:`TEMPLATE_TOKENS` inside any content, and for closed tasks that ``answer`` is
    allowed and is what :func:`parse_answer` reads from the reference reply. An empty list means valid.
    Taught in chapter 4b ("Validation").
    """
    where = f"record {index}"
    if not isinstance(record, Mapping):
        return [f"{where}: must be a JSON object (dict), got {type(record).__name__}"]
    problems: list[str] = []
    missing = [f for f in FIELDS if f not in record]
    problems += [f"{where}, field {f}: missing" for f in missing]
    problems += [f"{where}, field {f}: unknown field" for f in record if f not in FIELDS]
    for field in ("id", "source_id"):
        if field in record:
            _check_text(record[field], field, where, problems, max_chars=200)
    task = record.get("task")
    if "task" in record and task not in TASKS:
        problems.append(f"{where}, field task: unknown task {task!r}; known tasks: {list(TASKS)}")
    if "source" in record and record["source"] not in SOURCES:
        problems.append(f"{where}, field source: unknown source {record['source']!r}; known: {list(SOURCES)}")
    messages = record.get("messages")
    if "messages" in record:
        problems += _validate_messages(messages, where)
    if "answer" in record and task in TASKS:
        answer = record["answer"]
        if task in CLOSED_TASKS:
            if answer not in CLOSED_TASKS[task]:
                problems.append(
                    f"{where}, field answer: {answer!r} is not an allowed answer of closed task {task!r} "
                    f"{list(CLOSED_TASKS[task])}"
                )
            elif isinstance(messages, list) and messages and isinstance(messages[-1], Mapping):
                reply = messages[-1].get("content")
                if isinstance(reply, str) and reply.strip() and parse_answer(task, reply) != answer:
                    problems.append(
                        f"{where}, field answer: the reference reply parses to {parse_answer(task, reply)!r}, "
                        f"not to the answer {answer!r}"
                    )
        elif answer is not None:
            problems.append(f"{where}, field answer: must be null for open task {task!r}, got {answer!r}")
    if isinstance(messages, list):
        total = sum(len(m.get("content", "")) for m in messages if isinstance(m, Mapping) and isinstance(m.get("content"), str))
        if total > MAX_RECORD_CHARS:
            problems.append(f"{where}, field messages: too long ({total} characters in all > {MAX_RECORD_CHARS})")
    return problems


def _validate_messages(messages, where: str) -> list[str]:
    problems: list[str] = []
    if not isinstance(messages, list):
        return [f"{where}, field messages: must be a list of {{role, content}} objects, got {type(messages).__name__}"]
    if not messages:
        return [f"{where}, field messages: empty conversation"]
    if len(messages) > MAX_MESSAGES:
        problems.append(f"{where}, field messages: too many messages ({len(messages)} > {MAX_MESSAGES})")
    roles = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, Mapping):
            problems.append(f"{where}, field {field}: must be an object with role and content")
            roles.append(None)
            continue
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            problems.append(f"{where}, field {field}: unknown keys {extra} (only role and content)")
        role = message.get("role")
        roles.append(role)
        if role not in ROLES:
            problems.append(f"{where}, field {field}.role: {role!r} is not one of {list(ROLES)}")
        content = message.get("content")
        if role == "assistant" and isinstance(content, str) and not content.strip():
            problems.append(f"{where}, field {field}.content: empty assistant turn")
            continue
        _check_text(content, f"{field}.content", where, problems)
        if isinstance(content, str):
            found = [t for t in TEMPLATE_TOKENS if t in content]
            if found:
                problems.append(f"{where}, field {field}.content: contains template token(s) {found}")
    # role order: [system] user assistant (user assistant)*
    expected_first = 1 if roles and roles[0] == "system" else 0
    for i, role in enumerate(roles):
        if role not in ROLES:
            continue
        want = "user" if (i - expected_first) % 2 == 0 else "assistant"
        if i < expected_first:
            continue
        if role != want:
            problems.append(
                f"{where}, field messages[{i}].role: wrong role order, expected {want!r} got {role!r} "
                "(an optional system message, then user and assistant alternating)"
            )
            break
    if roles and roles[-1] != "assistant" and all(r in ROLES for r in roles):
        problems.append(f"{where}, field messages[{len(roles) - 1}].role: the conversation must end with an assistant turn")
    return problems


def _content_key(record) -> str | None:
    messages = record.get("messages") if isinstance(record, Mapping) else None
    if not isinstance(messages, list):
        return None
    try:
        return json.dumps([[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False)
    except (AttributeError, TypeError):
        return None


def validate_records(records: Sequence, max_report: int = 10) -> int:
    """Validate all ``records``; return their number, or raise :class:`SFTValidationError` reporting all bad ones.

    Besides :func:`validate_record`, a repeated ``id`` and a repeated conversation (same messages) are
    errors naming the earlier record. The message reads ``"3 bad records (of 120); first 3: record 17,
    field messages[2].content: empty assistant turn; ..."``; ``error.problems`` has them all.
    """
    if isinstance(records, (str, bytes, Mapping)):
        raise TypeError("records must be a sequence of record dicts (e.g. a list), not a single string or dict")
    problems: list[tuple[int, str]] = []
    seen_ids: dict[str, int] = {}
    seen_content: dict[str, int] = {}
    for index, record in enumerate(records):
        found = validate_record(record, index)
        if isinstance(record, Mapping):
            rid = record.get("id")
            if isinstance(rid, str):
                if rid in seen_ids:
                    found.append(f"record {index}, field id: duplicate id {rid!r} (first used by record {seen_ids[rid]})")
                else:
                    seen_ids[rid] = index
            key = _content_key(record)
            if key is not None:
                if key in seen_content:
                    found.append(f"record {index}, field messages: duplicate of record {seen_content[key]}")
                else:
                    seen_content[key] = index
        problems += [(index, p) for p in found]
    if problems:
        bad = sorted({i for i, _ in problems})
        shown = "; ".join(p for _, p in problems[:max_report])
        raise SFTValidationError(
            f"{len(bad)} bad records (of {len(records)}), {len(problems)} problems; first {min(max_report, len(problems))}: {shown}",
            problems,
        )
    return len(records)


def read_jsonl(path: Path | str) -> list[dict]:
    """Read a JSONL file strictly: raises :class:`SFTValidationError` listing every line that is not valid
    UTF-8 or not a JSON object, by line number (``"line 7: not valid JSON ..."``). What the usual writers add
    is accepted: a UTF-8 byte-order mark at the start, and blank lines (skipped)."""
    raw = Path(path).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # the BOM some editors (and Excel) put in front of UTF-8
        raw = raw[3:]
    records, problems = [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            problems.append((number, f"line {number}: not valid UTF-8 ({error.reason} at byte {error.start})"))
            continue
        try:
            records.append(json.loads(text))
        except json.JSONDecodeError as error:
            problems.append((number, f"line {number}: not valid JSON ({error.msg} at column {error.colno})"))
    if problems:
        shown = "; ".join(p for _, p in problems[:10])
        raise SFTValidationError(f"{len(problems)} unreadable lines in {path}; first: {shown}", problems)
    return records


def validate_jsonl(path: Path | str, max_report: int = 10) -> int:
    """Validate every record of a JSONL file (see :func:`validate_records`); returns the number of records."""
    return validate_records(read_jsonl(path), max_report=max_report)


def write_jsonl_atomic(records: Sequence[Mapping], path: Path | str) -> Path:
    """Validate ``records`` then write them as UTF-8 JSONL through a temporary file and a rename.

    Nothing is written when any record is bad (the :class:`SFTValidationError` lists them all).
    """
    from book_utils.cache import atomic_write_text

    validate_records(records)
    text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)
    return Path(path)


# --- the answer parser ------------------------------------------------------------------------------------

_NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}


def _norm_for_match(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    return " " + re.sub(r"[^a-z0-9']+", " ", text).strip() + " "


def parse_answer(task: str, text: str) -> str | None:
    """Map a generated reply to one allowed answer of closed ``task``, or ``None`` (a format failure).

    The stated rule (chapter 4c scores exact match with it): lower-case the reply, turn punctuation into
    spaces, and collect the allowed answers that occur as whole words (for ``rating`` also the number words
    one..five and "N out of 5"/"N/5"; for ``play`` the title with or without a leading "The"). Exactly one
    distinct answer found -> that answer; none or several (e.g. "positive or negative") -> ``None``.
    """
    if task not in CLOSED_TASKS:
        raise ValueError(f"parse_answer needs a closed task {list(CLOSED_TASKS)}, got {task!r}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if task == "rating":
        explicit = re.findall(r"\b([1-5])\s*(?:/|out of)\s*5\b", text.lower())
        if len(set(explicit)) == 1:
            return explicit[0]
    norm = _norm_for_match(text)
    found = set()
    for answer in CLOSED_TASKS[task]:
        variants = {answer.lower()}
        if task == "play" and answer.lower().startswith("the "):
            variants.add(answer.lower()[4:])
        if task == "rating":
            variants |= {w for w, d in _NUMBER_WORDS.items() if d == answer}
        for variant in variants:
            if _norm_for_match(variant) in norm:
                found.add(answer)
    return found.pop() if len(found) == 1 else None


# --- cleaning ---------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFC-normalise, unify line ends and quotes, trim spaces at line ends and around the text."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def garbage_reason(text, min_chars: int = 2, max_chars: int = MAX_CONTENT_CHARS) -> str | None:
    """Why ``text`` should not become training data (``None`` = keep): empty, too short or long, control
    characters, template tokens, mostly non-letters, or one character repeated 8+ times ("!!!!!!!!")."""
    if not isinstance(text, str) or not text.strip():
        return "empty"
    if len(text) < min_chars:
        return "too short"
    if len(text) > max_chars:
        return "too long"
    if any(t in text for t in TEMPLATE_TOKENS):
        return "template token"
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        return "control characters"
    letters = sum(c.isalpha() for c in text)
    if letters < 0.5 * len(re.sub(r"\s", "", text)):
        return "mostly non-letters"
    if re.search(r"(.)\1{7,}", text):
        return "repeated characters"
    return None


def exact_key(text: str) -> str:
    """The key two texts share when they are exact duplicates up to case, spacing and punctuation."""
    return re.sub(r"[^a-z0-9]+", " ", unicodedata.normalize("NFKC", text).lower()).strip()


def shingles(text: str, k: int = 5) -> set[str]:
    """Character ``k``-grams of the :func:`exact_key` of ``text`` (the whole key when it is shorter than k)."""
    key = exact_key(text)
    return {key[i : i + k] for i in range(max(len(key) - k + 1, 1))}


def jaccard(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if (a or b) else 1.0


def minhash_signatures(texts: Sequence[str], num_perm: int = 64, k: int = 5, seed: int = 0) -> np.ndarray:
    """MinHash signatures, shape ``(len(texts), num_perm)`` (uint64), of the character k-gram sets.

    Each "permutation" is a random affine map h(x) = (a x + b) mod 2^64 of the shingle's CRC32, keeping the
    top 32 bits; the signature keeps the minimum per map. For two sets the probability that one coordinate
    agrees is their Jaccard similarity, so the fraction of agreeing coordinates estimates it.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    out = np.empty((len(texts), num_perm), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, text in enumerate(texts):
            hashes = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in shingles(text, k)), dtype=np.uint64)
            out[i] = ((a[:, None] * hashes[None, :] + b[:, None]) >> np.uint64(32)).min(axis=1)
    return out


def near_duplicate_clusters(
    texts: Sequence[str], threshold: float = 0.7, num_perm: int = 64, bands: int = 16, k: int = 5, seed: int = 0
) -> list[list[int]]:
    """Groups of indices whose texts are near duplicates (character 5-gram Jaccard >= ``threshold``).

    Locality-sensitive hashing (局部敏感哈希): the MinHash signature is cut into ``bands`` bands of
    ``num_perm / bands`` rows; texts that agree on a whole band become candidate pairs (probability
    1 - (1 - J^r)^b for Jaccard J), and each candidate pair is confirmed with the exact Jaccard. Clusters
    are the connected components (union-find); only clusters of two or more are returned, sorted.
    """
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} must be divisible by bands={bands}")
    rows = num_perm // bands
    signatures = minhash_signatures(texts, num_perm=num_perm, k=k, seed=seed)
    sets = [shingles(t, k) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    checked: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, sig in enumerate(signatures[:, band * rows : (band + 1) * rows]):
            buckets[sig.tobytes()].append(i)
        for members in buckets.values():
            for j in members[1:]:
                pair = (members[0], j)
                if pair in checked:
                    continue
                checked.add(pair)
                if jaccard(sets[pair[0]], sets[j]) >= threshold:
                    parent[find(j)] = find(pair[0])
            # compare within a bucket against its first member and consecutive members (cheap, catches chains)
            for i, j in zip(members[1:], members[2:]):
                if (i, j) not in checked:
                    checked.add((i, j))
                    if jaccard(sets[i], sets[j]) >= threshold:
                        parent[find(j)] = find(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[find(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def clean_items(items: list[dict], *, min_chars: int, max_chars: int, threshold: float = 0.7) -> tuple[list[dict], Counter]:
    """Filter and deduplicate source items (dicts with ``source_id`` and ``text``), keeping the first of each
    duplicate group in ``source_id`` order. Returns the kept items and a Counter of why the others went:
    a garbage reason (:func:`garbage_reason`), ``"exact duplicate"`` or ``"near duplicate"``."""
    removed: Counter = Counter()
    kept = []
    for item in sorted(items, key=lambda it: it["source_id"]):
        reason = garbage_reason(item["text"], min_chars=min_chars, max_chars=max_chars)
        if reason is None and any(not t.strip() for t in item.get("turns", ())):
            reason = "empty turn"
        if reason:
            removed[reason] += 1
        else:
            kept.append(item)
    unique, seen = [], set()
    for item in kept:
        key = exact_key(item["text"])
        if key in seen:
            removed["exact duplicate"] += 1
        else:
            seen.add(key)
            unique.append(item)
    drop = {i for group in near_duplicate_clusters([it["text"] for it in unique], threshold=threshold) for i in group[1:]}
    removed["near duplicate"] += len(drop)
    return [it for i, it in enumerate(unique) if i not in drop], removed


# --- splits -----------------------------------------------------------------------------------------------


def split_of(source_id: str, seed: int = 0, fractions: Mapping[str, float] = SPLIT_FRACTIONS) -> str:
    """The split of a source item: a hash of ``seed`` and ``source_id`` mapped to [0, 1) and cut by
    ``fractions``. Every record made from the same item lands in the same split, whatever else the
    dataset contains, so no review or passage is ever in two splits."""
    digest = hashlib.blake2b(f"{seed}:{source_id}".encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    edge = 0.0
    for split, share in fractions.items():
        edge += share
        if u < edge:
            return split
    return list(fractions)[-1]


def assert_no_leakage(splits: Mapping[str, Iterable[Mapping]], min_prompt_chars: int = 30) -> None:
    """Raise ``AssertionError`` if a ``source_id``, or a user prompt of ``min_prompt_chars`` or more (after
    :func:`exact_key`), occurs in two splits. Short prompts ("hi", "how are you?") recur in any chat
    corpus and are not leaks; a review, a passage or a long question is."""
    owners: dict[tuple[str, str], str] = {}
    for split, records in splits.items():
        for record in records:
            prompt = exact_key(" ".join(m["content"] for m in record["messages"] if m["role"] == "user"))
            keys = [("source_id", record["source_id"])] + ([("prompt", prompt)] if len(prompt) >= min_prompt_chars else [])
            for key in keys:
                other = owners.setdefault(key, split)
                if other != split:
                    raise AssertionError(f"leak: {key[0]} {key[1][:80]!r} is in both {other!r} and {split!r}")


# --- sources -> items ---------------------------------------------------------------------------------------

REVIEW_MAX_CHARS = 250
PASSAGE_MAX_CHARS = 200
CHAT_MAX_CHARS = 400
IFBENCH_MAX_CHARS = 4000

_SPEAKER = re.compile(r"^(?:[A-Z][A-Za-z'\- ]{0,30}\.|[A-Z][A-Z'\- ]{1,30})$")  # "Hor." or "HERMIA"
MAX_TURNS = 12


def review_items() -> list[dict]:
    """Clothing reviews as items: ``source_id`` ``reviews:<row>``, text, rating (1-5), recommended (bool)."""
    from book_utils.assets import load_clothing_reviews

    df = load_clothing_reviews()
    items = []
    for row, text, rating, rec in zip(df.index, df["Review Text"], df["Rating"], df["Recommended IND"]):
        items.append({"source": "reviews", "source_id": f"reviews:{row}", "text": normalize_text(text) if isinstance(text, str) else "",
                      "rating": int(rating), "recommended": bool(rec)})
    return items


def speeches(text: str) -> list[list[str]]:
    """A play's speeches: the verse lines of each block that starts with a speaker line such as ``Hor.``
    (stage directions in brackets dropped)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().split("\n") if line.strip()]
        if len(lines) < 2 or not _SPEAKER.match(lines[0]):
            continue
        verse = [line for line in lines[1:] if not (line.startswith("[") or line.endswith("]"))]
        if verse:
            out.append(verse)
    return out


def shakespeare_items() -> list[dict]:
    """Speeches of the :data:`PLAYS` as items: ``source_id`` ``shakespeare:<play>:passage:<n>``, the play,
    a passage (the first verse lines up to :data:`PASSAGE_MAX_CHARS`) and, for speeches of 4+ lines, a
    prompt (first two lines) and continuation (next two lines)."""
    from book_utils.assets import load_shakespeare

    works = load_shakespeare()
    items = []
    for play in sorted(PLAYS):
        for n, verse in enumerate(speeches(works[play])):
            passage = []
            for line in verse:
                if len("\n".join(passage + [line])) > PASSAGE_MAX_CHARS:
                    break
                passage.append(line)
            if len(passage) < 2:
                continue
            item = {"source": "shakespeare", "source_id": f"shakespeare:{play}:passage:{n}", "play": play,
                    "text": normalize_text("\n".join(passage))}
            if len(verse) >= 4 and len("\n".join(verse[:4])) <= 2 * PASSAGE_MAX_CHARS:
                item["prompt"], item["continuation"] = "\n".join(verse[:2]), "\n".join(verse[2:4])
            items.append(item)
    return items


def chatterbot_items() -> list[dict]:
    """ChatterBot conversations (user and assistant alternating), ``source_id`` ``chatterbot:<topic>:<n>``."""
    from book_utils.assets import load_chatterbot

    items = []
    for topic, conversations in load_chatterbot().items():
        for n, conv in enumerate(conversations):
            turns = [normalize_text(t) for t in conv][:MAX_TURNS]
            turns = turns[: len(turns) // 2 * 2]
            if turns:
                items.append({"source": "chatterbot", "source_id": f"chatterbot:{topic}:{n}", "turns": turns,
                              "text": "\n".join(turns)})
    return items


def chitchat_items(limit: int | None = None) -> list[dict]:
    """Chit-chat conversations: the first sender is the user; consecutive messages of one sender are joined;
    the conversation is cut after the last assistant turn that keeps it within :data:`CHAT_MAX_CHARS`."""
    from book_utils.assets import load_chitchat

    data = load_chitchat()
    items = []
    for key in sorted(data)[:limit]:
        groups = data[key].get("messages") or []
        turns = [normalize_text(" ".join(m.get("text", "") for m in group)) for group in groups]
        kept: list[str] = []
        for i in range(0, min(len(turns), MAX_TURNS) - 1, 2):
            if len("\n".join(kept + turns[i : i + 2])) > CHAT_MAX_CHARS:
                break
            kept += turns[i : i + 2]
        if kept:
            items.append({"source": "chitchat", "source_id": f"chitchat:{key}", "turns": kept, "text": "\n".join(kept)})
    return items


def ifbench_items() -> list[dict]:
    """IFBench prompt/response pairs (responses written by a model: distillation data)."""
    from book_utils.assets import load_ifbench

    items = []
    for n, row in enumerate(load_ifbench()):
        turns = [normalize_text(row.get("prompt") or ""), normalize_text(row.get("response") or "")]
        items.append({"source": "ifbench", "source_id": f"ifbench:{n}", "turns": turns, "text": "\n".join(turns)})
    return items


# --- items -> records (FLAN-style templates) ----------------------------------------------------------------

#: Several phrasings per task; ``{text}`` is the review or passage, ``{options}`` the listed plays.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "sentiment": (
        "Is the sentiment of this review positive or negative?\n\nReview: {text}",
        "Review: {text}\n\nWas the customer happy (positive) or unhappy (negative)? Answer positive or negative.",
        "Classify the sentiment of the following product review as positive or negative.\n\n{text}",
        "{text}\n\nSentiment (positive/negative):",
    ),
    "rating": (
        "How many stars, from 1 to 5, did the customer give?\n\nReview: {text}",
        "Review: {text}\n\nPredict the star rating (1-5). Answer with one digit.",
        "Read the review and give its rating on a scale of 1 to 5.\n\n{text}",
        "{text}\n\nRating (1-5):",
    ),
    "recommend": (
        "Would the author of this review recommend the product? Answer yes or no.\n\nReview: {text}",
        "Review: {text}\n\nDoes the customer recommend this item (yes/no)?",
        "Based on the review below, would the customer recommend it to a friend? Reply yes or no.\n\n{text}",
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

#: System prompts given to a share of records, so the model sees conversations with and without one.
SYSTEM_PROMPTS = {
    "reviews": "You label customer reviews. Reply with the label only.",
    "shakespeare": "You are an expert on Shakespeare.",
    "chat": "You are a friendly conversation partner. Keep your replies short.",
}


def _rng_for(source_id: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.blake2b(f"{seed}/{source_id}".encode(), digest_size=8).digest(), "big"))


def review_answer(task: str, item: Mapping) -> str | None:
    """The label of a review for ``task``: sentiment from the rating (4-5 positive, 1-2 negative, 3 none)."""
    if task == "sentiment":
        return None if item["rating"] == 3 else ("positive" if item["rating"] >= 4 else "negative")
    if task == "rating":
        return str(item["rating"])
    if task == "recommend":
        return "yes" if item["recommended"] else "no"
    raise ValueError(f"{task!r} is not a review task")


def make_record(task: str, item: Mapping, seed: int = 0) -> dict | None:
    """One record of ``task`` from a source ``item`` (template, options and system prompt drawn with a
    generator seeded by the item, so the same item always gives the same record); ``None`` if the item
    cannot make this task (a 3-star review has no sentiment, a short speech no continuation)."""
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
        messages += [{"role": "user", "content": template.format(text=item["text"])}, {"role": "assistant", "content": answer}]
    elif task == "play":
        answer = PLAYS[item["play"]]
        others = [p for p in sorted(PLAYS) if p != item["play"]]
        options = [item["play"], *rng.choice(others, size=3, replace=False)]
        options = [PLAYS[p] for p in rng.permutation(options)]
        template = TEMPLATES[task][rng.integers(len(TEMPLATES[task]))]
        if rng.random() < 0.25:
            messages.append({"role": "system", "content": SYSTEM_PROMPTS["shakespeare"]})
        messages += [{"role": "user", "content": template.format(text=item["text"], options=", ".join(options))},
                     {"role": "assistant", "content": answer}]
    elif task == "continue":
        if "prompt" not in item:
            return None
        template = TEMPLATES[task][rng.integers(len(TEMPLATES[task]))]
        messages += [{"role": "user", "content": template.format(text=item["prompt"], title=PLAYS[item["play"]])},
                     {"role": "assistant", "content": item["continuation"]}]
    elif task in ("chat", "ifbench"):
        if task == "chat" and rng.random() < 0.25:
            messages.append({"role": "system", "content": SYSTEM_PROMPTS["chat"]})
        for i, turn in enumerate(item["turns"]):
            messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
    else:
        raise ValueError(f"unknown task {task!r}; known tasks: {list(TASKS)}")
    digest = hashlib.blake2b(f"{task}:{item['source_id']}".encode(), digest_size=6).hexdigest()
    return {"id": f"{task}-{digest}", "task": task, "source": item["source"], "source_id": item["source_id"],
            "messages": messages, "answer": answer}


# --- the whole pipeline ---------------------------------------------------------------------------------------

#: Records per task and split: (train, validation, test) for each profile. Closed tasks are balanced over
#: their answers; a source item is used at most once per task (a review may serve sentiment, rating and
#: recommend, always in the same split: negative reviews are too rare to give each task its own).
SIZES = {
    "full": {"sentiment": (900, 150, 150), "rating": (900, 150, 150), "recommend": (900, 150, 150),
             "play": (1200, 160, 160), "continue": (600, 60, 60), "chat": (1200, 80, 80), "ifbench": (200, 40, 40)},
    "ci": {"sentiment": (40, 16, 16), "rating": (40, 20, 20), "recommend": (40, 16, 16),
           "play": (48, 16, 16), "continue": (24, 8, 8), "chat": (40, 8, 8), "ifbench": (16, 4, 4)},
}
TASK_SOURCES = {"sentiment": ("reviews",), "rating": ("reviews",), "recommend": ("reviews",), "play": ("shakespeare",),
                "continue": ("shakespeare",), "chat": ("chatterbot", "chitchat"), "ifbench": ("ifbench",)}
FILL_ORDER = TASKS
CLEANING = {  # source: (min_chars, max_chars) of the item text
    "reviews": (20, REVIEW_MAX_CHARS), "shakespeare": (40, PASSAGE_MAX_CHARS), "chatterbot": (2, CHAT_MAX_CHARS),
    "chitchat": (2, CHAT_MAX_CHARS), "ifbench": (20, IFBENCH_MAX_CHARS),
}


def collect_items(profile: str) -> dict[str, list[dict]]:
    """All raw items per source (the ``ci`` profile reads only the first 1,500 chit-chat conversations)."""
    return {"reviews": review_items(), "shakespeare": shakespeare_items(), "chatterbot": chatterbot_items(),
            "chitchat": chitchat_items(limit=1500 if profile == "ci" else None), "ifbench": ifbench_items()}


def _take(task: str, pool: list[dict], n: int, used: set[str], seed: int) -> list[dict]:
    """Up to ``n`` records of ``task`` from ``pool`` (already in a seeded order), balanced over the answers
    of a closed task (equal quotas; a short answer class leaves its quota unfilled), each item used once."""
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


def build_sft_records(profile: str, seed: int = 0, items: Mapping[str, list[dict]] | None = None) -> tuple[dict[str, list[dict]], dict]:
    """The whole pipeline: items -> cleaning -> split by source item -> balanced sampling -> validation.

    Returns ``({split: records}, report)`` where ``report`` has the cleaning counts per source
    (``report["cleaning"][source][reason]``) and the item counts before and after cleaning. Deterministic:
    items are sorted by ``source_id`` and shuffled with ``seed``. Taught in chapter 4b.
    """
    if profile not in SIZES:
        raise ValueError(f"profile must be one of {list(SIZES)}, got {profile!r}")
    items = collect_items(profile) if items is None else items
    report = {"cleaning": {}, "items_raw": {}, "items_clean": {}}
    clean: dict[str, list[dict]] = {}
    for source, raw in items.items():
        lo, hi = CLEANING[source]
        clean[source], removed = clean_items(raw, min_chars=lo, max_chars=hi)
        report["items_raw"][source], report["items_clean"][source] = len(raw), len(clean[source])
        report["cleaning"][source] = dict(sorted(removed.items()))
    rng = np.random.default_rng(seed)
    by_split: dict[str, dict[str, list[dict]]] = {s: defaultdict(list) for s in SPLITS}
    for source, kept in clean.items():
        for item in kept:
            by_split[split_of(item["source_id"], seed)][source].append(item)
    records: dict[str, list[dict]] = {}
    for s_index, split in enumerate(SPLITS):
        out = []
        for source in sorted(by_split[split]):
            pool = by_split[split][source]
            by_split[split][source] = [pool[i] for i in rng.permutation(len(pool))]
        for task in FILL_ORDER:
            n = SIZES[profile][task][s_index]
            pool = [it for src in TASK_SOURCES[task] for it in by_split[split][src]]
            if len(TASK_SOURCES[task]) > 1:  # interleave the sources of a mixed task
                pool = [pool[i] for i in np.random.default_rng(seed + 1).permutation(len(pool))]
            out += _take(task, pool, n, set(), seed)
        records[split] = out
    for split in SPLITS:
        validate_records(records[split])
    assert_no_leakage(records)
    return records, report


SFT_ARTIFACT = "sft-data"


def _features():
    from datasets import Features, Value

    return Features({"id": Value("string"), "task": Value("string"), "source": Value("string"),
                     "source_id": Value("string"),
                     "messages": [{"role": Value("string"), "content": Value("string")}],
                     "answer": Value("string")})


def save_sft_dataset(records: Mapping[str, list[dict]], report: Mapping, folder: Path | str) -> None:
    """Write ``{split}.jsonl`` (through ``datasets``' ``to_json``) and ``report.json`` into ``folder``,
    after validating every record; call it inside :func:`book_utils.cache.atomic_dir`."""
    from datasets import Dataset

    from book_utils.cache import atomic_write_text

    folder = Path(folder)
    for split, rows in records.items():
        validate_records(rows)
        Dataset.from_list(list(rows), features=_features()).to_json(folder / f"{split}.jsonl", force_ascii=False)
    atomic_write_text(folder / "report.json", json.dumps(report, indent=1))


def load_sft_dataset(folder: Path | str):
    """Read a saved SFT dataset back as a ``DatasetDict``, validating every record of every split."""
    from datasets import Dataset, DatasetDict

    folder = Path(folder)
    out = {}
    for split in SPLITS:
        rows = read_jsonl(folder / f"{split}.jsonl")
        validate_records(rows)
        out[split] = Dataset.from_list(rows, features=_features())
    return DatasetDict(out)


def load_or_build_sft_dataset(ctx, seed: int = 0):
    """The book's SFT dataset as a ``DatasetDict`` (train/validation/test), from the artifact cache or built
    (about a minute in ``full``, seconds in ``ci``) and saved atomically as JSONL first. Built in chapter 4b;
    chapter 4c trains on it. ``load_sft_report(ctx)`` returns the cleaning report of the same build."""
    from book_utils.cache import artifact_dir, load_or_build

    def build(folder: Path) -> None:
        records, report = build_sft_records(ctx.profile, seed=seed)
        save_sft_dataset(records, report, folder)

    return load_or_build(artifact_dir(SFT_ARTIFACT, ctx.profile), build, load_sft_dataset)


def load_sft_report(ctx) -> dict:
    """The cleaning report written with the cached dataset (build it first with :func:`load_or_build_sft_dataset`)."""
    from book_utils.cache import artifact_dir

    return json.loads((artifact_dir(SFT_ARTIFACT, ctx.profile) / "report.json").read_text())


def dataset_card(dataset) -> "pd.DataFrame":  # noqa: F821
    """Records per task (rows) and split (columns) of a ``DatasetDict``, with totals."""
    import pandas as pd

    counts = {split: Counter(dataset[split]["task"]) for split in dataset}
    table = pd.DataFrame(counts).reindex([t for t in TASKS if any(t in c for c in counts.values())]).fillna(0).astype(int)
    table.loc["total"] = table.sum()
    return table


# --- loss masks -------------------------------------------------------------------------------------------------


def _render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages: Sequence[Mapping]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, per assistant turn, the character span trained on: its content and
    the template text after it up to and including the first special token (the end-of-turn token, e.g.
    ``<|im_end|>``), but not the newline the template adds after it.

    Found by rendering prefixes: the turn starts where ``render(messages[:i], add_generation_prompt=True)``
    ends; the method needs a template whose renders of prefixes are prefixes of the full render, and
    raises ``ValueError`` when they are not.
    """
    full = _render(tokenizer, messages)
    specials = sorted({t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ValueError(
                f"the chat template is not prefix-consistent at message {i}: rendering the first messages is not a "
                "prefix of rendering them all, so the assistant span cannot be found by prefixes"
            )
        start = upto.find(message["content"], len(before))
        if start < 0:
            raise ValueError(f"assistant message {i}'s content does not appear verbatim in the rendered template")
        end = start + len(message["content"])
        tail = upto[end:]
        hits = [(tail.find(t), t) for t in specials if tail.find(t) >= 0]
        if hits:
            pos, token = min(hits)
            end += pos + len(token)
        spans.append((start, end))
    return full, spans


def tokenize_for_sft(tokenizer, messages: Sequence[Mapping], max_length: int) -> dict[str, list[int]]:
    """Tokenize a conversation for SFT: ``input_ids``, ``attention_mask`` and ``labels``, with label -100 on
    every token that is not assistant content or its end-of-turn token (system, user, template tokens).

    Works for any prefix-consistent chat template, with or without ``{% generation %}`` markers (our
    chapter-3 ChatML tokenizer, SmolLM2's): the assistant spans come from :func:`assistant_char_spans`,
    and a token is trained on when its first character lies in a span (offset mapping). Truncated on the
    right to ``max_length`` tokens (a record may then have no trained token left: callers count and drop
    those). Taught in chapter 4b ("Loss masks").
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    problems = _validate_messages(list(messages), "messages")
    if problems:
        raise ValueError("; ".join(problems))
    text, spans = assistant_char_spans(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    labels = []
    for token_id, (start, _) in zip(ids, encoding["offset_mapping"]):
        inside = any(a <= start < b for a, b in spans)
        labels.append(token_id if inside else -100)
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def template_assistant_mask(tokenizer, messages: Sequence[Mapping], chat_template: str | None = None) -> list[int]:
    """The independent reference: transformers' own ``return_assistant_tokens_mask=True``, which needs a
    template with ``{% generation %}`` markers (ours has them; pass ``chat_template`` for one that lacks
    them, e.g. :func:`chatml_with_generation_markers`)."""
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, chat_template=chat_template)
    return list(out["assistant_masks"])


def chatml_with_generation_markers(default_system: str | None = None) -> str:
    """A ChatML template written by hand with ``{% generation %}`` around assistant content + ``<|im_end|>``;
    with ``default_system`` it adds that system message when the conversation has none (SmolLM2 does)."""
    system = ""
    if default_system is not None:
        system = ("{%- if messages[0]['role'] != 'system' -%}{{- '<|im_start|>system\\n" + default_system.replace("'", "\\'")
                  + "<|im_end|>\\n' -}}{%- endif -%}")
    return (
        system + "{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['role'] == 'assistant' -%}"
        "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
        "{%- else -%}{{- message['content'] + '<|im_end|>\\n' -}}{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


def token_table(tokenizer, example: Mapping[str, Sequence[int]]) -> "pd.DataFrame":  # noqa: F821
    """One row per token: position, token text (newlines shown as ⏎), id, label, trained (label != -100)."""
    import pandas as pd

    tokens = [tokenizer.decode([i]).replace("\n", "⏎") for i in example["input_ids"]]
    return pd.DataFrame({"token": tokens, "id": example["input_ids"], "label": example["labels"],
                         "trained": [label != -100 for label in example["labels"]]})


def mask_html(table, per_row: int = 14) -> str:
    """The token table as an HTML grid: trained tokens green, masked (-100) tokens grey (chapter 4b)."""
    import html

    cells = []
    for i, row in table.iterrows():
        colour = "#b7e4c7" if row["trained"] else "#e9ecef"
        cells.append(f'<td style="background:{colour};padding:2px 4px;border:1px solid #fff;font-family:monospace;'
                     f'white-space:pre">{html.escape(str(row["token"]))}</td>')
    rows = ["<tr>" + "".join(cells[i : i + per_row]) + "</tr>" for i in range(0, len(cells), per_row)]
    legend = ('<p style="font-size:90%"><span style="background:#b7e4c7">&nbsp;trained&nbsp;</span> '
              '<span style="background:#e9ecef">&nbsp;label -100&nbsp;</span></p>')
    return '<table style="border-collapse:collapse">' + "".join(rows) + "</table>" + legend


# --- packing vs padding -------------------------------------------------------------------------------------------


def pack_examples(examples: Sequence[Mapping[str, Sequence[int]]], block_size: int) -> list[dict[str, list[int]]]:
    """Greedy packing (打包): concatenate tokenized examples, in order, into blocks of at most ``block_size``
    tokens (an example longer than a block is truncated; none is split across blocks). Each block has
    ``input_ids``, ``labels`` (the first token of every example set to -100, so no example learns to predict
    its neighbour's start), ``position_ids`` restarting at 0 for every example, and ``doc_ids``."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    blocks: list[dict[str, list[int]]] = []
    current = {"input_ids": [], "labels": [], "position_ids": [], "doc_ids": []}
    for n, example in enumerate(examples):
        ids, labels = list(example["input_ids"])[:block_size], list(example["labels"])[:block_size]
        if current["input_ids"] and len(current["input_ids"]) + len(ids) > block_size:
            blocks.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": [], "doc_ids": []}
        current["input_ids"] += ids
        current["labels"] += [-100] + labels[1:]
        current["position_ids"] += list(range(len(ids)))
        current["doc_ids"] += [n] * len(ids)
    if current["input_ids"]:
        blocks.append(current)
    return blocks


def block_diagonal_causal_mask(doc_ids):
    """Boolean (T, T) mask: token i may attend to token j when j <= i and both belong to the same example."""
    import torch

    doc_ids = torch.as_tensor(doc_ids)
    T = doc_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return causal & (doc_ids[:, None] == doc_ids[None, :])


def padding_waste(lengths: Sequence[int], batch_size: int, block_size: int | None = None) -> dict[str, float]:
    """Share of pad tokens when batching ``lengths`` in order, padded to the longest in each batch; and,
    when ``block_size`` is given, the share of empty slots after greedy packing into blocks of that size."""
    lengths = list(lengths)
    padded = sum(max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size))
    out = {"padding": 1 - sum(lengths) / padded}
    sorted_lengths = sorted(lengths)
    padded_sorted = sum(max(sorted_lengths[i : i + batch_size]) * len(sorted_lengths[i : i + batch_size])
                        for i in range(0, len(lengths), batch_size))
    out["padding, length-grouped"] = 1 - sum(lengths) / padded_sorted
    if block_size is not None:
        blocks = pack_examples([{"input_ids": [0] * n, "labels": [0] * n} for n in lengths], block_size)
        used = sum(min(n, block_size) for n in lengths)
        out["packing"] = 1 - used / (len(blocks) * block_size)
    return out
