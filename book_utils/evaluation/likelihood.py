"""Log-likelihood multiple choice, as lm-evaluation-harness scores closed tasks: the
summed log-probability of each allowed answer after the prompt (one shared prompt pass
per item), accuracy by the raw sum and by the sum per character (lm-eval's ``acc`` and
``acc_norm``), and the same items through lm-eval itself, for the cross-check.

Generate-and-parse is :func:`book_utils.instruction_tuning.evaluate_closed`.

Taught in chapter 4c.4, book/04_sft/07_evaluation.ipynb ("Scoring by log-likelihood",
"The same items through lm-evaluation-harness").
"""

from __future__ import annotations

import contextlib
import io
import json

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
