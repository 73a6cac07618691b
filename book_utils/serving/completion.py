"""From token ids to the text of a chat reply, one token at a time (chapter 5.2,
"Streaming tokens").

A streamed reply sends each new token's text as soon as it is generated, which takes
two precautions:

- *incremental decoding*: a byte-level tokenizer may split one character over several
  tokens (an emoji, a Chinese character); until the last byte arrives the decoded text
  ends in ``"\\ufffd"``, the replacement character, and is held back;
- *stop strings*: the reply ends before the first stop string, which may arrive split
  over several tokens; text that could be the start of one is held back until it is
  clear that it is not.

:class:`ReplyText` does both; :func:`reply_pieces` runs it over
:func:`book_utils.decoding.generate_stream` and yields one piece of text per token,
so the pieces joined are exactly the non-streamed reply. :func:`sse` and the chunk
builders frame OpenAI's ``chat.completion.chunk`` events.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence

#: what a decoder writes for an incomplete UTF-8 sequence
REPLACEMENT = "\ufffd"


class ReplyText:
    """The decoded reply so far, and how much of it is safe to send."""

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = [s for s in stop_strings if s]
        self.ids: list[int] = []
        self.text = ""  # the reply, cut before a stop string once one appeared
        self.sent = 0  # characters of text handed out so far
        self.stopped = False  # a stop string appeared

    def _held_back(self, text: str) -> int:
        """Characters at the end of ``text`` that may not be sent yet: an incomplete
        character, or the beginning of a stop string."""
        safe = len(text.rstrip(REPLACEMENT))
        longest = 0
        for stop in self.stop_strings:
            for k in range(min(len(stop) - 1, safe), longest, -1):
                if text[safe - k : safe] == stop[:k]:
                    longest = k
                    break
        return len(text) - safe + longest

    def add(self, token_id: int) -> str:
        """Append one token; return the text that became safe to send (maybe "")."""
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        if cuts:
            self.stopped = True
            self.text = text[: max(min(cuts), self.sent)]
            return self.flush()
        self.text = text
        end = len(text) - self._held_back(text)
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent : end], end
        return piece

    def flush(self) -> str:
        """Everything not sent yet (at the end of the reply). A reply that ran out of
        tokens in the middle of a character ends in ``"\ufffd"``, as
        ``tokenizer.decode`` writes it, streamed or not."""
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece


def reply_pieces(
    steps: Iterator, reply: ReplyText, stop_ids: Sequence[int], state: dict
) -> Iterator[str]:
    """One piece of text per generated token (``""`` while text is held back), then
    what is left at the end; joined, the pieces are ``reply.text``.

    ``steps`` is :func:`~book_utils.decoding.generate_stream` for one prompt. At the
    end ``state`` holds ``finish_reason`` (``"stop"``: a stop token or stop string;
    ``"length"``: out of tokens) and ``completion_tokens`` (the tokens the model
    generated, a final stop token included). ``steps`` is closed however this ends.
    """
    state["completion_tokens"], state["finish_reason"] = 0, "length"
    try:
        for next_ids in steps:
            token = int(next_ids[0])
            state["completion_tokens"] += 1
            if token in stop_ids:
                state["finish_reason"] = "stop"
                break
            yield reply.add(token)
            if reply.stopped:
                state["finish_reason"] = "stop"
                break
    finally:
        steps.close()
    tail = reply.flush()
    if tail:
        yield tail


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    id_: str, model: str, text: str, finish_reason: str, counts: dict
) -> dict:
    """A non-streamed answer, object ``chat.completion``."""
    return {
        "id": id_,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": counts,
    }


def chunk(
    id_: str, model: str, delta: dict | None, finish_reason: str | None = None
) -> dict:
    """One streamed event, object ``chat.completion.chunk``; ``delta=None`` makes the
    usage chunk's empty ``choices``."""
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    )
    return {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


def sse(data: dict | str) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    if not isinstance(data, str):
        data = json.dumps(data, ensure_ascii=False)
    return f"data: {data}\n\n"
