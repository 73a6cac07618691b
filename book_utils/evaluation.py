"""Evaluating an LLM (模型评估): the yardsticks of chapter 4c.4.

- **Log-likelihood multiple choice**, as lm-evaluation-harness scores closed tasks:
  :func:`continuation_logprobs` (the summed log-probability of each allowed answer after
  the prompt, one shared prompt pass per item), :func:`score_choices` (accuracy by the
  raw sum and by the sum per character, lm-eval's ``acc`` and ``acc_norm``) and
  :func:`lm_eval_choices` (the same items through lm-eval itself, for the cross-check).
  Generate-and-parse is :func:`book_utils.instruction_tuning.evaluate_closed`.
- **Verifiable instructions**, IFEval style: :data:`CHECKS` (word and sentence counts,
  required and forbidden words, keyword frequency, JSON, bullet lists, case, ending
  phrase), :func:`follows` (strict or loose), :func:`instruction_prompts`, which adds
  such instructions to prompts, and :func:`instruction_scores` (IFEval's four numbers).
- **A model as pairwise judge**: :func:`judge_prompt` and :func:`judge_pairs` (both
  orders, so position bias shows).
- **Statistics**: :func:`items_for_halfwidth`, :func:`mcnemar_exact`;
  :func:`word_ngrams` and :func:`continuation_match` for contamination checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch

# --- log-likelihood multiple choice ---------------------------------------------------


def encode_pair(
    tokenizer, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` after it, split the way
    lm-eval splits them: trailing whitespace of the context moves to the continuation,
    the pair is encoded whole, and the continuation is what follows the context's own
    encoding."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    whole, head = encode(context + continuation), encode(context)
    if whole[: len(head)] != head:
        raise ValueError(
            f"context {context[-30:]!r} and continuation {continuation[:30]!r} merge "
            "into one token at their boundary: score them as one sequence"
        )
    return head, whole[len(head) :]


@torch.no_grad()
def continuation_logprobs(model, context_ids, continuations) -> list[float]:
    """Summed log-probability of each continuation (a list of token ids) after
    ``context_ids``. The context runs once; its KV cache is repeated for a single
    batched pass over all continuations (right-padded; padding comes after the tokens
    that count, so a causal model never sees it)."""
    if not context_ids or not continuations or not all(continuations):
        raise ValueError("need a non-empty context and non-empty continuations")
    device = next(model.parameters()).device
    k, longest = len(continuations), max(map(len, continuations))
    prompt = torch.tensor([context_ids], device=device)
    out = model(prompt, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    scores = [float(first[c[0]]) for c in continuations]
    if longest == 1:
        return scores
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    ids = torch.zeros(k, longest, dtype=torch.long, device=device)
    mask = torch.zeros(k, len(context_ids) + longest, dtype=torch.long, device=device)
    for row, cont in enumerate(continuations):
        ids[row, : len(cont)] = torch.tensor(cont)
        mask[row, : len(context_ids) + len(cont)] = 1
    logits = model(ids, attention_mask=mask, past_key_values=cache).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    for row, cont in enumerate(continuations):
        targets = torch.tensor(cont[1:], dtype=torch.long, device=device)
        positions = torch.arange(len(cont) - 1, device=device)
        scores[row] += float(logp[row, positions, targets].sum())
    return scores


def answer_continuation(tokenizer, messages, answer: str) -> tuple[str, str]:
    """The prompt a chat model sees (template with the generation prompt) and the
    assistant turn holding ``answer`` as the template writes it after that prompt (with
    its end-of-turn marker, so that an answer that is a prefix of another is not
    favoured)."""
    from book_utils.instruction_tuning import prompt_of

    prompt_messages = prompt_of(messages)
    prompt = tokenizer.apply_chat_template(
        prompt_messages, tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(
        [*prompt_messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template does not render the answer after the prompt"
        )
    return prompt, full[len(prompt) :].rstrip()


def score_choices(model, tokenizer, records, *, progress: bool = False):
    """Log-likelihood scoring of closed-task records: per record, every allowed answer
    (:func:`~book_utils.instruction_tuning.options_of`) is scored as a continuation of
    the prompt. Returns a DataFrame: ``id``, ``task``, ``answer``, ``options``,
    ``logprobs``, ``pick`` (highest sum: lm-eval's ``acc``), ``pick_norm`` (highest sum
    per character of the continuation: ``acc_norm``), ``correct``, ``correct_norm``."""
    import pandas as pd
    from tqdm.auto import tqdm

    from book_utils.instruction_tuning import options_of

    was_training = model.training
    model.eval()
    rows = []
    for r in tqdm(list(records), desc="score", disable=not progress, leave=False):
        options = options_of(r)
        pairs = [answer_continuation(tokenizer, r["messages"], o) for o in options]
        encoded = [encode_pair(tokenizer, p, c) for p, c in pairs]
        if any(e[0] != encoded[0][0] for e in encoded):
            raise ValueError(f"record {r['id']!r}: options change the prompt's tokens")
        logprobs = continuation_logprobs(model, encoded[0][0], [e[1] for e in encoded])
        lengths = [
            len(c) for _, c in pairs
        ]  # lm-eval divides by the choice's characters
        pick = options[int(np.argmax(logprobs))]
        pick_norm = options[int(np.argmax(np.array(logprobs) / lengths))]
        rows.append(
            {
                "id": r["id"],
                "task": r["task"],
                "answer": r["answer"],
                "options": options,
                "logprobs": logprobs,
                "pick": pick,
                "pick_norm": pick_norm,
                "correct": pick == r["answer"],
                "correct_norm": pick_norm == r["answer"],
            }
        )
    model.train(was_training)
    return pd.DataFrame(rows)


_LM_EVAL_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: target
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def lm_eval_choices(model, tokenizer, records, *, workdir, batch_size: int = 8):
    """The same items as :func:`score_choices` through lm-evaluation-harness: a local
    ``multiple_choice`` task (a YAML file and a JSON-lines file in ``workdir``) run by
    ``lm_eval.simple_evaluate`` on the in-memory model. Returns ``(frame, metrics)``:
    per record lm-eval's ``logprobs`` of the options and its 0/1 ``acc`` and
    ``acc_norm``, and its aggregate metrics."""
    from pathlib import Path

    import pandas as pd
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from book_utils.instruction_tuning import options_of

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    docs = []
    for r in records:
        options = options_of(r)
        pairs = [answer_continuation(tokenizer, r["messages"], o) for o in options]
        docs.append(
            {
                "id": r["id"],
                "context": pairs[0][0],
                "choices": [c for _, c in pairs],
                "target": options.index(r["answer"]),
            }
        )
    data = workdir / "items.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    name = "book_closed_tasks"
    (workdir / f"{name}.yaml").write_text(_LM_EVAL_TASK.format(name=name, data=data))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with contextlib.redirect_stderr(io.StringIO()):  # the harness's progress bars
        result = simple_evaluate(
            model=lm,
            tasks=[name],
            log_samples=True,
            task_manager=TaskManager(include_path=str(workdir)),
        )
    samples = sorted(result["samples"][name], key=lambda s: s["doc_id"])
    frame = pd.DataFrame(
        {
            "id": [d["id"] for d in docs],
            "logprobs": [[float(ll) for ll, _ in s["filtered_resps"]] for s in samples],
            "acc": [bool(s["acc"]) for s in samples],
            "acc_norm": [bool(s["acc_norm"]) for s in samples],
        }
    )
    return frame, result["results"][name]


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


# --- a model as judge -----------------------------------------------------------------

JUDGE_TEMPLATE = (
    "Here is a message and two possible replies to it.\n\n"
    "Message: {question}\n\nReply A: {a}\n\nReply B: {b}\n\n"
    "Which reply is the better answer to the message? Answer with one letter, A or B."
)


def judge_prompt(question: str, a: str, b: str) -> list[dict]:
    """The pairwise-judge conversation: a message, replies A and B, asked for A or B."""
    return [
        {"role": "user", "content": JUDGE_TEMPLATE.format(question=question, a=a, b=b)}
    ]


def judge_pairs(model, tokenizer, pairs, *, progress: bool = False):
    """Ask ``model`` which of two replies is better, for each ``(question, better,
    worse)`` in ``pairs``, in both orders. The verdict is the letter with the higher
    log-probability as the reply. Returns a DataFrame with one row per pair and order:
    ``pair``, ``better_first``, ``verdict`` ("A"/"B"), ``margin`` (log p(A) − log p(B)),
    ``picked_first``, ``correct``."""
    import pandas as pd
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    rows = []
    for index, (question, better, worse) in enumerate(
        tqdm(list(pairs), desc="judge", disable=not progress, leave=False)
    ):
        for better_first in (True, False):
            a, b = (better, worse) if better_first else (worse, better)
            messages = [
                *judge_prompt(question, a, b),
                {"role": "assistant", "content": ""},
            ]
            encoded = [
                encode_pair(tokenizer, *answer_continuation(tokenizer, messages, x))
                for x in ("A", "B")
            ]
            la, lb = continuation_logprobs(
                model, encoded[0][0], [e[1] for e in encoded]
            )
            verdict = "A" if la >= lb else "B"
            rows.append(
                {
                    "pair": index,
                    "better_first": better_first,
                    "verdict": verdict,
                    "margin": la - lb,
                    "picked_first": verdict == "A",
                    "correct": (verdict == "A") == better_first,
                }
            )
    model.train(was_training)
    return pd.DataFrame(rows)


# --- statistics -----------------------------------------------------------------------


def items_for_halfwidth(halfwidth: float, p: float = 0.5, *, z: float = 1.96) -> int:
    """Items needed for a 95 % (``z`` = 1.96) interval of ± ``halfwidth`` around an
    accuracy near ``p``: the normal approximation n = z² p(1 − p) / halfwidth²."""
    if not 0 < halfwidth < 1 or not 0 < p < 1:
        raise ValueError(f"need 0 < halfwidth < 1 and 0 < p < 1, got {halfwidth}, {p}")
    return math.ceil(z * z * p * (1 - p) / halfwidth**2)


def mcnemar_exact(correct_a, correct_b) -> dict[str, float]:
    """McNemar's exact test for two systems scored on the same items: only the items on
    which they disagree count; under "equally good" each such item favours A with
    probability ½. Returns ``a_only``, ``b_only`` and the two-sided ``p_value``."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"score the same items: {a.shape} against {b.shape}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": min(1.0, 2 * tail)}


def word_ngrams(text: str, n: int = 13) -> set[str]:
    """The set of lower-cased word ``n``-grams of ``text`` (13 words is the usual
    contamination probe: long enough that a shared one is almost never chance)."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@torch.no_grad()
def continuation_match(model, tokenizer, texts, *, prefix: int = 32, suffix: int = 16):
    """A memorisation probe: for each text, greedy decoding continues its first
    ``prefix`` tokens for ``suffix`` tokens; returns, per text, the share of those
    tokens that equal the text's own next tokens, position by position (1.0: the text
    is reproduced verbatim). Texts shorter than ``prefix + suffix`` tokens get NaN."""
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    keep = [i for i, ids in enumerate(encoded) if len(ids) >= prefix + suffix]
    scores = np.full(len(encoded), np.nan)
    if not keep:
        return scores
    device = next(model.parameters()).device
    heads = torch.tensor([encoded[i][:prefix] for i in keep], device=device)
    truth = torch.tensor([encoded[i][prefix : prefix + suffix] for i in keep])
    out = model.generate(
        heads,
        attention_mask=torch.ones_like(heads),
        max_new_tokens=suffix,
        min_new_tokens=suffix,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    scores[keep] = (out[:, prefix:].cpu() == truth).float().mean(dim=1).numpy()
    return scores
