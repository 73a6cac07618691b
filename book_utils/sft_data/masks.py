"""Loss masks (损失掩码) and packing (打包): :func:`tokenize_for_sft` puts label
:data:`IGNORE_INDEX` on every non-assistant token, for any chat template, by rendering
prefixes; :func:`template_assistant_mask` is the independent check; the token table
and its HTML view; packing vs padding (填充) with :func:`pack_examples`,
:func:`block_diagonal_causal_mask` and :func:`padding_waste`.

Taught in chapter 4b, book/04_sft/03_sft_data.ipynb ("Loss masks", "Packing");
chapter 4c (book/04_sft/04_instruction_tuning.ipynb,
book/04_sft/06_lora_smollm2.ipynb) tokenizes its training data with
:func:`tokenize_for_sft`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from book_utils.checks import positive_int
from book_utils.sft_data.schema import _validate_messages

#: The label value the loss ignores (PyTorch's ``cross_entropy`` default
#: ``ignore_index``): every token that is not trained on gets it.
IGNORE_INDEX = -100

# --- loss masks ----------------------------------------------------------------------


def _render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_char_spans(
    tokenizer, messages: Sequence[Mapping]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, per assistant turn, the character span trained
    on: its content and the template text after it up to and including the first
    special token (the end-of-turn token, e.g. ``<|im_end|>``), but not the newline the
    template adds after it.

    Found by rendering prefixes: the turn starts where
    ``render(messages[:i], add_generation_prompt=True)`` ends; the method needs a
    template whose renders of prefixes are prefixes of the full render, and raises
    ``ValueError`` when they are not.
    """
    full = _render(tokenizer, messages)
    specials = sorted(
        {t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True
    )
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = (
            _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        )
        upto = _render(tokenizer, messages[: i + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ValueError(
                f"the chat template is not prefix-consistent at message {i}: "
                "rendering the first messages is not a prefix of rendering them all, "
                "so the assistant span cannot be found by prefixes"
            )
        start = upto.find(message["content"], len(before))
        if start < 0:
            raise ValueError(
                f"assistant message {i}'s content does not appear verbatim in the "
                "rendered template"
            )
        end = start + len(message["content"])
        tail = upto[end:]
        hits = [(tail.find(t), t) for t in specials if tail.find(t) >= 0]
        if hits:
            pos, token = min(hits)
            end += pos + len(token)
        spans.append((start, end))
    return full, spans


def tokenize_for_sft(
    tokenizer, messages: Sequence[Mapping], max_length: int
) -> dict[str, list[int]]:
    """Tokenize a conversation for SFT: ``input_ids``, ``attention_mask`` and
    ``labels``, with label :data:`IGNORE_INDEX` (-100) on every token that is not
    assistant content or its end-of-turn token (system, user, template tokens).

    Works for any prefix-consistent chat template, with or without
    ``{% generation %}`` markers (our chapter-3 ChatML tokenizer, SmolLM2's): the
    assistant spans come from :func:`assistant_char_spans`, and a token is trained on
    when its first character lies in a span (offset mapping). Truncated on the right to
    ``max_length`` tokens (a record may then have no trained token left: callers count
    and drop those). Taught in chapter 4b ("Loss masks").
    """
    max_length = positive_int("max_length", max_length)
    problems = _validate_messages(list(messages), "messages")
    if problems:
        raise ValueError("; ".join(problems))
    text, spans = assistant_char_spans(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    labels = []
    for token_id, (start, _) in zip(ids, encoding["offset_mapping"]):
        inside = any(a <= start < b for a, b in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def template_assistant_mask(
    tokenizer, messages: Sequence[Mapping], chat_template: str | None = None
) -> list[int]:
    """The independent reference: transformers' own
    ``return_assistant_tokens_mask=True``, which needs a template with
    ``{% generation %}`` markers (ours has them; pass ``chat_template`` for one that
    lacks them, e.g. :func:`chatml_with_generation_markers`)."""
    out = tokenizer.apply_chat_template(
        list(messages),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        chat_template=chat_template,
    )
    return list(out["assistant_masks"])


def chatml_with_generation_markers(default_system: str | None = None) -> str:
    """A ChatML template written by hand with ``{% generation %}`` around assistant
    content + ``<|im_end|>``; with ``default_system`` it adds that system message when
    the conversation has none (SmolLM2 does)."""
    system = ""
    if default_system is not None:
        system = (
            "{%- if messages[0]['role'] != 'system' -%}"
            "{{- '<|im_start|>system\\n"
            + default_system.replace("'", "\\'")
            + "<|im_end|>\\n' -}}{%- endif -%}"
        )
    return (
        system + "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['role'] == 'assistant' -%}"
        "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
        "{{- '\\n' -}}"
        "{%- else -%}{{- message['content'] + '<|im_end|>\\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
        "{%- endif -%}"
    )


def token_table(tokenizer, example: Mapping[str, Sequence[int]]) -> "pd.DataFrame":  # noqa: F821
    """One row per token: position, token text (newlines shown as ⏎), id, label,
    trained (label != :data:`IGNORE_INDEX`)."""
    import pandas as pd

    tokens = [tokenizer.decode([i]).replace("\n", "⏎") for i in example["input_ids"]]
    return pd.DataFrame(
        {
            "token": tokens,
            "id": example["input_ids"],
            "label": example["labels"],
            "trained": [label != IGNORE_INDEX for label in example["labels"]],
        }
    )


def mask_html(table, per_row: int = 14) -> str:
    """The token table as an HTML grid: trained tokens green, masked (-100) tokens grey
    (chapter 4b)."""
    import html

    cells = []
    for i, row in table.iterrows():
        colour = "#b7e4c7" if row["trained"] else "#e9ecef"
        cells.append(
            f'<td style="background:{colour};padding:2px 4px;border:1px solid #fff;'
            f'font-family:monospace;white-space:pre">'
            f"{html.escape(str(row['token']))}</td>"
        )
    rows = [
        "<tr>" + "".join(cells[i : i + per_row]) + "</tr>"
        for i in range(0, len(cells), per_row)
    ]
    legend = (
        '<p style="font-size:90%"><span style="background:#b7e4c7">&nbsp;trained'
        '&nbsp;</span> <span style="background:#e9ecef">&nbsp;label '
        f"{IGNORE_INDEX}&nbsp;</span></p>"
    )
    return (
        '<table style="border-collapse:collapse">' + "".join(rows) + "</table>" + legend
    )


# --- packing vs padding --------------------------------------------------------------


def pack_examples(
    examples: Sequence[Mapping[str, Sequence[int]]], block_size: int
) -> list[dict[str, list[int]]]:
    """Greedy packing (打包): concatenate tokenized examples, in order, into blocks of
    at most ``block_size`` tokens (an example longer than a block is truncated; none is
    split across blocks). Each block has ``input_ids``, ``labels`` (the first token of
    every example set to :data:`IGNORE_INDEX`, so no example learns to predict its
    neighbour's start), ``position_ids`` restarting at 0 for every example, and
    ``doc_ids``."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    blocks: list[dict[str, list[int]]] = []
    current = {"input_ids": [], "labels": [], "position_ids": [], "doc_ids": []}
    for n, example in enumerate(examples):
        ids = list(example["input_ids"])[:block_size]
        labels = list(example["labels"])[:block_size]
        if current["input_ids"] and len(current["input_ids"]) + len(ids) > block_size:
            blocks.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": [], "doc_ids": []}
        current["input_ids"] += ids
        current["labels"] += [IGNORE_INDEX] + labels[1:]
        current["position_ids"] += list(range(len(ids)))
        current["doc_ids"] += [n] * len(ids)
    if current["input_ids"]:
        blocks.append(current)
    return blocks


def block_diagonal_causal_mask(doc_ids):
    """Boolean (T, T) mask: token i may attend to token j when j <= i and both belong
    to the same example."""
    import torch

    doc_ids = torch.as_tensor(doc_ids)
    T = doc_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return causal & (doc_ids[:, None] == doc_ids[None, :])


def padding_waste(
    lengths: Sequence[int], batch_size: int, block_size: int | None = None
) -> dict[str, float]:
    """Share of pad tokens when batching ``lengths`` in order, padded to the longest in
    each batch; and, when ``block_size`` is given, the share of empty slots after greedy
    packing into blocks of that size."""
    lengths = list(lengths)

    def padded(ordered: list[int]) -> int:
        return sum(
            max(ordered[i : i + batch_size]) * len(ordered[i : i + batch_size])
            for i in range(0, len(ordered), batch_size)
        )

    out = {"padding": 1 - sum(lengths) / padded(lengths)}
    out["padding, length-grouped"] = 1 - sum(lengths) / padded(sorted(lengths))
    if block_size is not None:
        blocks = pack_examples(
            [{"input_ids": [0] * n, "labels": [0] * n} for n in lengths], block_size
        )
        used = sum(min(n, block_size) for n in lengths)
        out["packing"] = 1 - used / (len(blocks) * block_size)
    return out
