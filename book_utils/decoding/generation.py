"""The generation loop from scratch: left padding, greedy or sampled decoding with or
without the KV cache (键值缓存), stop tokens.

Sampling draws with ``torch.multinomial`` on the probabilities from the global RNG, as
``generate`` does. So the same settings and the same seed give *the same tokens* as
``model.generate``; chapter 5.1 checks it token for token.

:func:`generate_stream` holds the loop and yields each step's new ids, so a server can
stream a reply token by token (chapter 5.2); :func:`generate` collects its steps.

Taught in chapter 5.1, book/05_deployment/01_decoding.ipynb ("Token for token against
`model.generate`", "What each strategy writes", "Batching and left padding").
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch

from book_utils.decoding.strategies import DecodingConfig, process_logits

# --- the generation loop --------------------------------------------------------------


def left_pad(
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    pad_token_id: int | None = None,
):
    """Batch prompts of different lengths with padding on the *left*:
    ``(input_ids, attention_mask)``.

    A decoder reads the next token off the last position, so every row's last position
    must be a real token; right padding would put pads there. ``prompts`` are strings
    (encoded without special tokens) or id lists.
    """
    if not prompts:
        raise ValueError("left_pad needs at least one prompt")
    rows = [
        tokenizer(p, add_special_tokens=False)["input_ids"]
        if isinstance(p, str)
        else list(p)
        for p in prompts
    ]
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise ValueError(
            f"prompts {empty} encode to no tokens; every prompt needs at least one "
            "token"
        )
    pad = pad_token_id if pad_token_id is not None else tokenizer.pad_token_id
    if pad is None:
        raise ValueError(
            "the tokenizer has no pad token: pass pad_token_id (any id works, it is "
            "masked out)"
        )
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at each row's first real token (pads get 0), as
    ``generate`` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def generate_stream(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    cfg: DecodingConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    deadline: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """The generation loop, one step at a time: yields each step's new ids ``(B,)``.

    Takes the arguments of :func:`generate` and checks them at once (a bad argument
    raises here, not at the first step). A server streams a reply with it, token by
    token, and stops early by closing the iterator (``.close()``); :func:`generate`
    collects every step. A finished row gets ``pad_token_id``; the iterator ends when
    every row is finished or after ``max_new_tokens`` steps.
    """
    cfg = cfg or DecodingConfig()
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(
            f"max_new_tokens must be a positive int, got {max_new_tokens!r}"
        )
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            "input_ids must be (batch, length) with length >= 1, got shape "
            f"{tuple(input_ids.shape)}"
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids "
            f"{tuple(input_ids.shape)}"
        )
    device = next(model.parameters()).device
    stops = None
    if eos_token_id is not None:
        stops = torch.tensor(
            [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
            device=device,
        )
        if stops.numel() == 0:
            raise ValueError(
                "eos_token_id is an empty list: pass None to generate without stopping"
            )
        if pad_token_id is None:
            pad_token_id = int(stops[0])
    return _steps(
        model,
        input_ids.to(device),
        attention_mask.to(device),
        max_new_tokens,
        cfg,
        stops,
        pad_token_id,
        use_cache,
        deadline,
        generator,
    )


@torch.no_grad()  # torch enters no_grad at every resumption, in whichever thread
def _steps(
    model, ids, mask, max_new_tokens, cfg, stops, pad_token_id, use_cache, deadline, rng
):
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    past, step_ids = None, ids
    for _ in range(max_new_tokens):
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError("generation ran past its deadline")
        positions = _positions(mask)
        if use_cache:
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions[:, -step_ids.shape[1] :],
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
        else:
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
            )
        scores = process_logits(out.logits[:, -1].float(), ids, cfg)
        if cfg.do_sample:
            probs = torch.softmax(scores, dim=-1)
            if rng is not None:
                probs = probs.to(rng.device)
            next_ids = (
                torch.multinomial(probs, num_samples=1, generator=rng)
                .squeeze(1)
                .to(ids.device)
            )
        else:
            next_ids = scores.argmax(dim=-1)
        if stops is not None:
            next_ids = torch.where(
                unfinished, next_ids, torch.full_like(next_ids, pad_token_id)
            )
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_ids = next_ids[:, None]
        yield next_ids
        if stops is not None:
            unfinished &= ~torch.isin(next_ids, stops)
            if not unfinished.any():
                return


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    cfg: DecodingConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    deadline: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens after ``input_ids`` ``(B, T)``; returns
    ``(B, T + new)`` ids.

    With ``use_cache`` the prompt is run once (prefill) and each step feeds only the
    newest token together with the keys and values of all earlier positions
    (``past_key_values``, a ``DynamicCache``); without it every step recomputes the
    whole prefix. A row that produced ``eos_token_id`` (one id, or several such as a
    chat model's ``<|im_end|>`` and ``<|endoftext|>``, see :func:`stop_token_ids`) is
    finished and padded with ``pad_token_id``; the loop stops when every row is
    finished. Sampling uses the global torch RNG (seed it with ``torch.manual_seed``),
    like ``model.generate``, unless ``generator`` is given (a training loop prints its
    samples with its own generator, so they never change the run's random state).
    ``deadline`` (a ``time.perf_counter()`` value) raises
    :class:`TimeoutError` when passed, so a server can bound a request's time.
    The loop itself is :func:`generate_stream`; this collects its steps.
    """
    steps = generate_stream(
        model,
        input_ids,
        max_new_tokens,
        cfg,
        attention_mask=attention_mask,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=use_cache,
        deadline=deadline,
        generator=generator,
    )
    device = next(model.parameters()).device
    return torch.cat([input_ids.to(device), torch.stack(list(steps), dim=1)], dim=1)


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a reply: ``<|im_end|>`` (ChatML end of turn) and the
    tokenizer's eos, when present."""
    ids = []
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.append(im_end)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def until_stop(tokens: Sequence[int], stops: Sequence[int]) -> list[int]:
    """The generated ``tokens`` up to (not including) the first stop token: one reply,
    its padding dropped."""
    tokens = list(tokens)
    return tokens[: next((k for k, t in enumerate(tokens) if t in stops), len(tokens))]


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    cfg: DecodingConfig | None = None,
    **kw,
) -> str:
    """Decode one prompt string and return only the new text (special tokens removed);
    stops at :func:`stop_token_ids`."""
    ids, mask = left_pad(tokenizer, [prompt])
    out = generate(
        model,
        ids,
        max_new_tokens,
        cfg,
        attention_mask=mask,
        eos_token_id=stop_token_ids(tokenizer),
        **kw,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
