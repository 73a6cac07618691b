"""Verifiable instructions, IFEval style: :data:`CHECKS` (word and sentence counts,
required and forbidden words, keyword frequency, JSON, bullet lists, case, ending
phrase), :func:`follows` (strict or loose), :func:`instruction_prompts`, which adds such
instructions to prompts, and :func:`instruction_scores` (IFEval's four numbers).

Taught in chapter 4c.4, book/04_sft/07_evaluation.ipynb ("Verifiable instruction
following").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import numpy as np

# --- verifiable instructions (IFEval style) -------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if _words(s)]


def _count_word(text: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


def _relation(count: int, relation: str, n: int) -> bool:
    if relation not in ("at least", "at most", "exactly"):
        raise ValueError(
            f"relation must be 'at least', 'at most' or 'exactly', not {relation!r}"
        )
    return {"at least": count >= n, "at most": count <= n, "exactly": count == n}[
        relation
    ]


def _json_body(reply: str) -> str:
    body = reply.strip()
    fence = re.fullmatch(
        r"```(?:json)?\s*(.*?)\s*```", body, flags=re.DOTALL | re.IGNORECASE
    )
    return fence.group(1) if fence else body


def _is_json(reply: str) -> bool:
    try:
        json.loads(_json_body(reply))
    except ValueError:
        return False
    return True


def _bullets(reply: str) -> int:
    return len(re.findall(r"^\s*[*-]\s+\S", reply, flags=re.MULTILINE))


#: IFEval-style checks: ``name -> (instruction template, check(reply, **kwargs))``. The
#: template is what the prompt says; the check decides from the reply alone.
CHECKS: dict[str, tuple[str, Callable[..., bool]]] = {
    "words": (
        "Answer in {relation} {n} words.",
        lambda reply, relation, n: _relation(len(_words(reply)), relation, n),
    ),
    "sentences": (
        "Answer in {relation} {n} sentences.",
        lambda reply, relation, n: _relation(len(_sentences(reply)), relation, n),
    ),
    "include": (
        "Include the word '{word}' in your answer.",
        lambda reply, word: _count_word(reply, word) > 0,
    ),
    "forbidden": (
        "Do not use the words '{a}' or '{b}' anywhere in your answer.",
        lambda reply, a, b: _count_word(reply, a) == 0 and _count_word(reply, b) == 0,
    ),
    "frequency": (
        "Use the word '{word}' {relation} {n} times.",
        lambda reply, word, relation, n: _relation(
            _count_word(reply, word), relation, n
        ),
    ),
    "json": (
        'Wrap your entire answer in JSON, for example {{"answer": "..."}}.',
        lambda reply: _is_json(reply),
    ),
    "bullets": (
        "Answer as exactly {n} bullet points, one per line, each starting with '* '.",
        lambda reply, n: _bullets(reply) == n,
    ),
    "lowercase": (
        "Write your entire answer in lowercase letters; no capital letters at all.",
        lambda reply: bool(re.search(r"[a-z]", reply)) and reply == reply.lower(),
    ),
    "uppercase": (
        "Write your entire answer in capital letters.",
        lambda reply: bool(re.search(r"[A-Z]", reply)) and reply == reply.upper(),
    ),
    "end_phrase": (
        "End your answer with the exact phrase '{phrase}', with nothing after it.",
        lambda reply, phrase: reply.strip().lower().endswith(phrase.lower()),
    ),
}


def _loose_variants(reply: str) -> list[str]:
    """IFEval's loose reading: the reply, without its first line, without its last line,
    without both, and each of these with markdown asterisks removed."""
    lines = reply.split("\n")
    cuts = [reply, "\n".join(lines[1:]), "\n".join(lines[:-1]), "\n".join(lines[1:-1])]
    return [v for cut in cuts for v in (cut, cut.replace("*", "")) if v.strip()]


def follows(
    reply: str | None, check: str, kwargs: dict | None = None, *, loose: bool = False
) -> bool:
    """Whether ``reply`` follows the instruction ``check`` of :data:`CHECKS` with
    ``kwargs``; ``loose`` also accepts IFEval's loose variants of the reply."""
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; known: {sorted(CHECKS)}")
    if not reply or not reply.strip():
        return False
    fn = CHECKS[check][1]
    variants = _loose_variants(reply) if loose else [reply]
    return any(fn(v, **(kwargs or {})) for v in variants)


_WORDS = ("river", "light", "garden", "music", "winter", "friend", "window", "paper")
_PHRASES = (
    "Is there anything else I can help with?",
    "That is all.",
    "Have a nice day!",
)


def _random_kwargs(check: str, rng: np.random.Generator) -> dict:
    pick = lambda seq: seq[int(rng.integers(len(seq)))]
    if check == "words":
        return {"relation": "at most", "n": int(pick((15, 20, 30)))}
    if check == "sentences":
        return {"relation": "exactly", "n": int(pick((1, 2, 3)))}
    if check == "include":
        return {"word": pick(_WORDS)}
    if check == "forbidden":
        return {"a": "the", "b": pick(("is", "and", "you"))}
    if check == "frequency":
        return {"word": pick(_WORDS), "relation": "at least", "n": 2}
    if check == "bullets":
        return {"n": int(pick((2, 3)))}
    if check == "end_phrase":
        return {"phrase": pick(_PHRASES)}
    return {}


#: Checks that cannot hold together (a reply cannot be JSON and a bullet list, or end
#: on a phrase and still be JSON): :func:`instruction_prompts` never pairs them.
CONFLICTS = (
    {"json", "bullets"},
    {"json", "end_phrase"},
    {"json", "sentences"},
    {"lowercase", "uppercase"},
    {"bullets", "sentences"},
)


def instruction_prompts(
    prompts: Sequence[str], *, per_prompt: int = 2, seed: int = 0
) -> list[dict]:
    """IFEval-style items: each prompt followed by ``per_prompt`` verifiable
    instructions from :data:`CHECKS` with seeded arguments. The first instruction cycles
    through the checks (each is used about equally); the others are drawn at random
    among the checks that do not conflict with those already chosen
    (:data:`CONFLICTS`). Returns dicts ``prompt`` and ``instructions`` (a list of
    ``{"check", "kwargs", "text"}``)."""
    if per_prompt < 1:
        raise ValueError(f"per_prompt must be at least 1, got {per_prompt}")
    rng = np.random.default_rng(seed)
    names = list(CHECKS)
    firsts = [names[i % len(names)] for i in rng.permutation(len(prompts))]
    items = []
    for prompt, first in zip(prompts, firsts):
        chosen = [first]
        while len(chosen) < per_prompt:
            allowed = [
                c
                for c in names
                if c not in chosen and not any({c, d} in CONFLICTS for d in chosen)
            ]
            chosen.append(allowed[int(rng.integers(len(allowed)))])
        instructions = []
        for check in chosen:
            kwargs = _random_kwargs(check, rng)
            text = CHECKS[check][0].format(**kwargs)
            instructions.append({"check": check, "kwargs": kwargs, "text": text})
        body = " ".join(i["text"] for i in instructions)
        items.append(
            {"prompt": f"{prompt.rstrip()}\n\n{body}", "instructions": instructions}
        )
    return items


def instruction_scores(items, replies) -> dict[str, float]:
    """IFEval's four numbers for ``replies`` to :func:`instruction_prompts` ``items``:
    the share of prompts whose every instruction is followed (prompt level) and the
    share of instructions followed (instruction level), strict and loose."""
    if len(items) != len(replies):
        raise ValueError(f"{len(items)} items but {len(replies)} replies")
    scores = {}
    for mode in ("strict", "loose"):
        per_prompt = [
            [
                follows(reply, i["check"], i["kwargs"], loose=mode == "loose")
                for i in item["instructions"]
            ]
            for item, reply in zip(items, replies)
        ]
        scores[f"prompt_{mode}"] = float(np.mean([all(p) for p in per_prompt]))
        scores[f"instruction_{mode}"] = float(
            np.mean([x for p in per_prompt for x in p])
        )
    return scores
