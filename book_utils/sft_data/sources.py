"""Sources -> items: clothing reviews, Shakespeare speeches, ChatterBot and chit-chat
dialogues, IFBench prompt/response pairs, each read into plain dicts with a
``source_id``, and the length limits the cleaning applies per source
(:data:`CLEANING`).

Taught in chapter 4b, book/04_sft/03_sft_data.ipynb ("Sources").
"""

from __future__ import annotations

import re

from book_utils.sft_data.cleaning import normalize_text
from book_utils.sft_data.schema import PLAYS

REVIEW_MAX_CHARS = 250
PASSAGE_MAX_CHARS = 200
CHAT_MAX_CHARS = 400
IFBENCH_MAX_CHARS = 4000

_SPEAKER = re.compile(
    r"^(?:[A-Z][A-Za-z'\- ]{0,30}\.|[A-Z][A-Z'\- ]{1,30})$"
)  # "Hor." or "HERMIA"
MAX_TURNS = 12

#: Per source, the (min_chars, max_chars) of the item text that cleaning keeps.
CLEANING = {
    "reviews": (20, REVIEW_MAX_CHARS),
    "shakespeare": (40, PASSAGE_MAX_CHARS),
    "chatterbot": (2, CHAT_MAX_CHARS),
    "chitchat": (2, CHAT_MAX_CHARS),
    "ifbench": (20, IFBENCH_MAX_CHARS),
}


def review_items() -> list[dict]:
    """Clothing reviews as items: ``source_id`` ``reviews:<row>``, text, rating (1-5),
    recommended (bool)."""
    from book_utils.assets import load_clothing_reviews

    df = load_clothing_reviews()
    items = []
    for row, text, rating, rec in zip(
        df.index, df["Review Text"], df["Rating"], df["Recommended IND"]
    ):
        items.append(
            {
                "source": "reviews",
                "source_id": f"reviews:{row}",
                "text": normalize_text(text) if isinstance(text, str) else "",
                "rating": int(rating),
                "recommended": bool(rec),
            }
        )
    return items


def speeches(text: str) -> list[list[str]]:
    """A play's speeches: the verse lines of each block that starts with a speaker line
    such as ``Hor.`` (stage directions in brackets dropped)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().split("\n") if line.strip()]
        if len(lines) < 2 or not _SPEAKER.match(lines[0]):
            continue
        verse = [
            line
            for line in lines[1:]
            if not (line.startswith("[") or line.endswith("]"))
        ]
        if verse:
            out.append(verse)
    return out


def shakespeare_items() -> list[dict]:
    """Speeches of the :data:`PLAYS` as items: ``source_id``
    ``shakespeare:<play>:passage:<n>``, the play, a passage (the first verse lines up
    to :data:`PASSAGE_MAX_CHARS`) and, for speeches of 4+ lines, a prompt (first two
    lines) and continuation (next two lines)."""
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
            item = {
                "source": "shakespeare",
                "source_id": f"shakespeare:{play}:passage:{n}",
                "play": play,
                "text": normalize_text("\n".join(passage)),
            }
            if len(verse) >= 4 and len("\n".join(verse[:4])) <= 2 * PASSAGE_MAX_CHARS:
                item["prompt"] = "\n".join(verse[:2])
                item["continuation"] = "\n".join(verse[2:4])
            items.append(item)
    return items


def chatterbot_items() -> list[dict]:
    """ChatterBot conversations (user and assistant alternating), ``source_id``
    ``chatterbot:<topic>:<n>``."""
    from book_utils.assets import load_chatterbot

    items = []
    for topic, conversations in load_chatterbot().items():
        for n, conv in enumerate(conversations):
            turns = [normalize_text(t) for t in conv][:MAX_TURNS]
            turns = turns[: len(turns) // 2 * 2]
            if turns:
                items.append(
                    {
                        "source": "chatterbot",
                        "source_id": f"chatterbot:{topic}:{n}",
                        "turns": turns,
                        "text": "\n".join(turns),
                    }
                )
    return items


def chitchat_items(limit: int | None = None) -> list[dict]:
    """Chit-chat conversations: the first sender is the user; consecutive messages of
    one sender are joined; the conversation is cut after the last assistant turn that
    keeps it within :data:`CHAT_MAX_CHARS`."""
    from book_utils.assets import load_chitchat

    data = load_chitchat()
    items = []
    for key in sorted(data)[:limit]:
        groups = data[key].get("messages") or []
        turns = [
            normalize_text(" ".join(m.get("text", "") for m in group))
            for group in groups
        ]
        kept: list[str] = []
        for i in range(0, min(len(turns), MAX_TURNS) - 1, 2):
            if len("\n".join(kept + turns[i : i + 2])) > CHAT_MAX_CHARS:
                break
            kept += turns[i : i + 2]
        if kept:
            items.append(
                {
                    "source": "chitchat",
                    "source_id": f"chitchat:{key}",
                    "turns": kept,
                    "text": "\n".join(kept),
                }
            )
    return items


def ifbench_items() -> list[dict]:
    """IFBench prompt/response pairs (responses written by a model: distillation
    data)."""
    from book_utils.assets import load_ifbench

    items = []
    for n, row in enumerate(load_ifbench()):
        turns = [
            normalize_text(row.get("prompt") or ""),
            normalize_text(row.get("response") or ""),
        ]
        items.append(
            {
                "source": "ifbench",
                "source_id": f"ifbench:{n}",
                "turns": turns,
                "text": "\n".join(turns),
            }
        )
    return items
