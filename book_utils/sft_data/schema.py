"""The SFT record contract and its validator: tasks, sources, chat roles, length
limits, :func:`validate_record` / :func:`validate_records`, and :func:`parse_answer`,
the stated parser chapter 4c scores exact match with.

Taught in chapter 4b, book/04_sft/03_sft_data.ipynb ("The record contract",
"Validation").
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence

# --- the contract --------------------------------------------------------------------

#: Where records come from (the ``source`` field).
SOURCES = ("reviews", "shakespeare", "chatterbot", "chitchat", "ifbench")
ROLES = ("system", "user", "assistant")
SPLITS = ("train", "validation", "test")
FIELDS = ("id", "task", "source", "source_id", "messages", "answer")

#: The plays of the "which play" task, file stem -> title as the model must answer it.
#: Four are the plays chapter 3's base model never saw in pretraining (macbeth,
#: twelfth_night, hamlet, tempest); four it did.
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

#: For each closed task, the answers a reply may be parsed to (the ``answer`` field is
#: one of them).
CLOSED_TASKS: dict[str, tuple[str, ...]] = {
    "sentiment": ("positive", "negative"),
    "recommend": ("yes", "no"),
    "rating": ("1", "2", "3", "4", "5"),
    "play": tuple(PLAYS.values()),
}
#: Open tasks have no single checkable answer (``answer`` is null).
OPEN_TASKS = ("continue", "chat", "ifbench")
TASKS = tuple(CLOSED_TASKS) + OPEN_TASKS

#: Strings that belong to chat templates, never to content: a user who types them
#: could forge turns.
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>")

#: Length limits the validator enforces (characters; token limits are the model's
#: business).
MAX_CONTENT_CHARS = 4000
MAX_RECORD_CHARS = 8000
MAX_MESSAGES = 16

#: Share of source items per split; the split of an item depends only on its
#: ``source_id``.
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}


class SFTValidationError(ValueError):
    """Records break the SFT data contract. ``problems`` lists every
    ``(record index, message)`` found."""

    def __init__(self, message: str, problems: list[tuple[int, str]]):
        super().__init__(message)
        self.problems = problems


# --- validation ----------------------------------------------------------------------


def _check_text(
    value,
    field: str,
    where: str,
    problems: list[str],
    max_chars: int = MAX_CONTENT_CHARS,
) -> None:
    if not isinstance(value, str):
        problems.append(
            f"{where}, field {field}: must be a string, got {type(value).__name__}"
        )
        return
    if not value.strip():
        problems.append(f"{where}, field {field}: empty string")
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        problems.append(
            f"{where}, field {field}: not valid UTF-8 (contains a lone surrogate)"
        )
    if len(value) > max_chars:
        problems.append(
            f"{where}, field {field}: too long ({len(value)} characters > {max_chars})"
        )


def validate_record(record, index: int = 0) -> list[str]:
    """Every way ``record`` breaks the SFT contract, as
    ``"record 17, field messages[2].content: ..."`` strings.

    Checks the schema (exactly :data:`FIELDS`, types, known task and source), the role
    order (an optional system message, then user/assistant alternating, ending with
    assistant), non-empty valid-UTF-8 strings, length limits, no
    :data:`TEMPLATE_TOKENS` inside any content, and for closed tasks that ``answer`` is
    allowed and is what :func:`parse_answer` reads from the reference reply. An empty
    list means valid. Taught in chapter 4b ("Validation").
    """
    where = f"record {index}"
    if not isinstance(record, Mapping):
        return [f"{where}: must be a JSON object (dict), got {type(record).__name__}"]
    problems: list[str] = []
    missing = [f for f in FIELDS if f not in record]
    problems += [f"{where}, field {f}: missing" for f in missing]
    problems += [
        f"{where}, field {f}: unknown field" for f in record if f not in FIELDS
    ]
    for field in ("id", "source_id"):
        if field in record:
            _check_text(record[field], field, where, problems, max_chars=200)
    task = record.get("task")
    if "task" in record and task not in TASKS:
        problems.append(
            f"{where}, field task: unknown task {task!r}; known tasks: {list(TASKS)}"
        )
    if "source" in record and record["source"] not in SOURCES:
        problems.append(
            f"{where}, field source: unknown source {record['source']!r}; "
            f"known: {list(SOURCES)}"
        )
    messages = record.get("messages")
    if "messages" in record:
        problems += _validate_messages(messages, where)
    if "answer" in record and task in TASKS:
        answer = record["answer"]
        if task in CLOSED_TASKS:
            if answer not in CLOSED_TASKS[task]:
                problems.append(
                    f"{where}, field answer: {answer!r} is not an allowed answer of "
                    f"closed task {task!r} {list(CLOSED_TASKS[task])}"
                )
            elif (
                isinstance(messages, list)
                and messages
                and isinstance(messages[-1], Mapping)
            ):
                reply = messages[-1].get("content")
                if (
                    isinstance(reply, str)
                    and reply.strip()
                    and parse_answer(task, reply) != answer
                ):
                    problems.append(
                        f"{where}, field answer: the reference reply parses to "
                        f"{parse_answer(task, reply)!r}, not to the answer {answer!r}"
                    )
        elif answer is not None:
            problems.append(
                f"{where}, field answer: must be null for open task {task!r}, "
                f"got {answer!r}"
            )
    if isinstance(messages, list):
        total = sum(
            len(m.get("content", ""))
            for m in messages
            if isinstance(m, Mapping) and isinstance(m.get("content"), str)
        )
        if total > MAX_RECORD_CHARS:
            problems.append(
                f"{where}, field messages: too long "
                f"({total} characters in all > {MAX_RECORD_CHARS})"
            )
    return problems


def _validate_messages(messages, where: str) -> list[str]:
    problems: list[str] = []
    if not isinstance(messages, list):
        return [
            f"{where}, field messages: must be a list of {{role, content}} objects, "
            f"got {type(messages).__name__}"
        ]
    if not messages:
        return [f"{where}, field messages: empty conversation"]
    if len(messages) > MAX_MESSAGES:
        problems.append(
            f"{where}, field messages: too many messages "
            f"({len(messages)} > {MAX_MESSAGES})"
        )
    roles = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, Mapping):
            problems.append(
                f"{where}, field {field}: must be an object with role and content"
            )
            roles.append(None)
            continue
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            problems.append(
                f"{where}, field {field}: unknown keys {extra} (only role and content)"
            )
        role = message.get("role")
        roles.append(role)
        if role not in ROLES:
            problems.append(
                f"{where}, field {field}.role: {role!r} is not one of {list(ROLES)}"
            )
        content = message.get("content")
        if role == "assistant" and isinstance(content, str) and not content.strip():
            problems.append(f"{where}, field {field}.content: empty assistant turn")
            continue
        _check_text(content, f"{field}.content", where, problems)
        if isinstance(content, str):
            found = [t for t in TEMPLATE_TOKENS if t in content]
            if found:
                problems.append(
                    f"{where}, field {field}.content: contains template token(s) "
                    f"{found}"
                )
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
                f"{where}, field messages[{i}].role: wrong role order, expected "
                f"{want!r} got {role!r} (an optional system message, then user and "
                "assistant alternating)"
            )
            break
    if roles and roles[-1] != "assistant" and all(r in ROLES for r in roles):
        problems.append(
            f"{where}, field messages[{len(roles) - 1}].role: the conversation must "
            "end with an assistant turn"
        )
    return problems


def _content_key(record) -> str | None:
    messages = record.get("messages") if isinstance(record, Mapping) else None
    if not isinstance(messages, list):
        return None
    try:
        return json.dumps(
            [[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False
        )
    except (AttributeError, TypeError):
        return None


def validate_records(records: Sequence, max_report: int = 10) -> int:
    """Validate all ``records``; return their number, or raise
    :class:`SFTValidationError` reporting all bad ones.

    Besides :func:`validate_record`, a repeated ``id`` and a repeated conversation
    (same messages) are errors naming the earlier record. The message reads
    ``"3 bad records (of 120); first 3: record 17, field messages[2].content: empty
    assistant turn; ..."``; ``error.problems`` has them all.
    """
    if isinstance(records, (str, bytes, Mapping)):
        raise TypeError(
            "records must be a sequence of record dicts (e.g. a list), "
            "not a single string or dict"
        )
    problems: list[tuple[int, str]] = []
    seen_ids: dict[str, int] = {}
    seen_content: dict[str, int] = {}
    for index, record in enumerate(records):
        found = validate_record(record, index)
        if isinstance(record, Mapping):
            rid = record.get("id")
            if isinstance(rid, str):
                if rid in seen_ids:
                    found.append(
                        f"record {index}, field id: duplicate id {rid!r} "
                        f"(first used by record {seen_ids[rid]})"
                    )
                else:
                    seen_ids[rid] = index
            key = _content_key(record)
            if key is not None:
                if key in seen_content:
                    found.append(
                        f"record {index}, field messages: duplicate of record "
                        f"{seen_content[key]}"
                    )
                else:
                    seen_content[key] = index
        problems += [(index, p) for p in found]
    if problems:
        bad = sorted({i for i, _ in problems})
        shown = "; ".join(p for _, p in problems[:max_report])
        raise SFTValidationError(
            f"{len(bad)} bad records (of {len(records)}), {len(problems)} problems; "
            f"first {min(max_report, len(problems))}: {shown}",
            problems,
        )
    return len(records)


# --- the answer parser ---------------------------------------------------------------

_NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}


def _norm_for_match(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    return " " + re.sub(r"[^a-z0-9']+", " ", text).strip() + " "


def parse_answer(task: str, text: str) -> str | None:
    """Map a generated reply to one allowed answer of closed ``task``, or ``None`` (a
    format failure).

    The stated rule (chapter 4c scores exact match with it): lower-case the reply, turn
    punctuation into spaces, and collect the allowed answers that occur as whole words
    (for ``rating`` also the number words one..five and "N out of 5"/"N/5"; for
    ``play`` the title with or without a leading "The"). Exactly one distinct answer
    found -> that answer; none or several (e.g. "positive or negative") -> ``None``.
    """
    if task not in CLOSED_TASKS:
        raise ValueError(
            f"parse_answer needs a closed task {list(CLOSED_TASKS)}, got {task!r}"
        )
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
