"""Decoding (解码) from scratch: greedy, temperature, top-k, top-p, repetition penalty,
no-repeat-n-gram, the KV cache and batched generation with left padding (taught in
chapter 5, "Decoding").

Each logits processor below is written out in a few lines and applied in the order
``transformers`` 5 applies them inside ``model.generate`` (repetition penalty →
no-repeat-n-gram → temperature → top-k → top-p), and sampling draws with
``torch.multinomial`` on the probabilities from the global RNG, as ``generate`` does. So
the same settings and the same seed give *the same tokens* as ``model.generate``;
chapter 5 checks it token for token.

The module also measures what the chapter plots: repetition (distinct-n, repeated n-gram
rate), the latency of one new token with and without the KV cache (键值缓存) against
context length, and throughput against batch size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

# --- the logits processors, one by one ------------------------------------------------


def apply_repetition_penalty(
    scores: torch.Tensor, input_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Penalise every token already in ``input_ids`` (prompt included): a positive logit
    is divided by ``penalty``, a negative one multiplied by it (Keskar et al. 2019,
    CTRL), so both become less likely.

    ``scores``: ``(B, V)`` logits of the next token; ``input_ids``: ``(B, T)``.
    ``penalty=1`` changes nothing.
    """
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {penalty!r}")
    if penalty == 1.0:
        return scores
    seen = torch.gather(scores, 1, input_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids, seen)


def ban_repeated_ngrams(
    scores: torch.Tensor, input_ids: torch.Tensor, n: int
) -> torch.Tensor:
    """Forbid (logit −∞) every token that would complete an n-gram already present in
    ``input_ids``.

    If the last ``n − 1`` tokens equal the first ``n − 1`` tokens of an earlier n-gram,
    that n-gram's last token is banned. ``n=0`` is off. Strict: a phrase of n tokens can
    never occur twice in the whole sequence.
    """
    if n < 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {n!r}")
    if n == 0 or input_ids.shape[1] < n:
        return scores
    scores = scores.clone()
    for row, ids in enumerate(input_ids.tolist()):
        prefix = tuple(ids[len(ids) - n + 1 :]) if n > 1 else ()
        banned = {
            ids[i + n - 1]
            for i in range(len(ids) - n + 1)
            if tuple(ids[i : i + n - 1]) == prefix
        }
        if banned:
            scores[row, list(banned)] = -float("inf")
    return scores


def apply_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature`` > 0: below 1 sharpens the distribution,
    above 1 flattens it."""
    if temperature <= 0:
        raise ValueError(
            "temperature must be > 0 when sampling (use greedy for 'temperature 0'), "
            f"got {temperature!r}"
        )
    return scores / temperature


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits of each row (ties with the k-th are kept too), set
    the rest to −∞. 0 = off."""
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {k!r}")
    if k == 0:
        return scores
    kth = torch.topk(scores, min(k, scores.shape[-1])).values[..., -1:]
    return scores.masked_fill(scores < kth, -float("inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (核) sampling filter (Holtzman et al. 2020): keep the smallest set of
    most likely tokens whose probability sums to at least ``p``; the most likely token
    is always kept. ``p=1`` is off.

    Written as ``transformers`` does: sort ascending, drop the tokens whose cumulative
    probability is ≤ 1 − p (the unlikely tail), so the result matches
    ``TopPLogitsWarper`` exactly.
    """
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {p!r}")
    if p == 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1 - p
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, -float("inf"))


@dataclass(frozen=True)
class DecodingConfig:
    """One decoding strategy: greedy when ``do_sample`` is False, else sampling with the
    given filters.

    Defaults turn every option off (temperature 1, top_k 0, top_p 1, penalty 1,
    n-gram 0).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if (
            isinstance(self.top_k, bool)
            or not isinstance(self.top_k, int)
            or self.top_k < 0
        ):
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"repetition_penalty must be > 0, got {self.repetition_penalty!r}"
            )
        if (
            isinstance(self.no_repeat_ngram_size, bool)
            or not isinstance(self.no_repeat_ngram_size, int)
            or (self.no_repeat_ngram_size < 0)
        ):
            raise ValueError(
                "no_repeat_ngram_size must be an int >= 0, got "
                f"{self.no_repeat_ngram_size!r}"
            )

    def generate_kwargs(self) -> dict:
        """The same settings as keyword arguments of ``model.generate`` (every option
        explicit, so a model's own ``generation_config`` defaults cannot slip in)."""
        kwargs = asdict(self)
        kwargs["top_k"] = self.top_k or None
        kwargs["top_p"] = self.top_p if self.top_p < 1 else None
        if not self.do_sample:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def process_logits(
    scores: torch.Tensor, input_ids: torch.Tensor, cfg: DecodingConfig
) -> torch.Tensor:
    """All processors of ``cfg`` in ``transformers``' order: repetition penalty →
    no-repeat-n-gram, then (only when sampling) temperature → top-k → top-p. ``scores``
    ``(B, V)`` float logits, ``input_ids`` ``(B, T)``."""
    scores = apply_repetition_penalty(scores, input_ids, cfg.repetition_penalty)
    scores = ban_repeated_ngrams(scores, input_ids, cfg.no_repeat_ngram_size)
    if cfg.do_sample:
        if cfg.temperature != 1.0:
            scores = apply_temperature(scores, cfg.temperature)
        scores = top_k_filter(scores, cfg.top_k)
        scores = top_p_filter(scores, cfg.top_p)
    return scores


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
    like ``model.generate``. ``deadline`` (a ``time.perf_counter()`` value) raises
    :class:`TimeoutError` when passed, so a server can bound a request's time.
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
    ids, mask = input_ids.to(device), attention_mask.to(device)
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=device)
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
            next_ids = torch.multinomial(
                torch.softmax(scores, dim=-1), num_samples=1
            ).squeeze(1)
        else:
            next_ids = scores.argmax(dim=-1)
        if stops is not None:
            next_ids = torch.where(
                unfinished, next_ids, torch.full_like(next_ids, pad_token_id)
            )
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_ids = next_ids[:, None]
        if stops is not None:
            unfinished &= ~torch.isin(next_ids, stops)
            if not unfinished.any():
                break
    return ids


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


# --- repetition -----------------------------------------------------------------------


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    """The n-grams of ``tokens`` in order (overlapping)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: Sequence[Sequence], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams, pooled over
    ``sequences``; 1 = nothing repeats."""
    grams = [g for seq in sequences for g in ngrams(seq, n)]
    if not grams:
        raise ValueError(f"no {n}-grams: the sequences are all shorter than {n} tokens")
    return len(set(grams)) / len(grams)


def repeated_ngram_rate(tokens: Sequence, n: int) -> float:
    """Fraction of a sequence's n-grams that already occurred earlier in the *same*
    sequence (loops, stutters)."""
    grams = ngrams(tokens, n)
    if not grams:
        raise ValueError(f"a sequence of {len(tokens)} tokens has no {n}-grams")
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


# --- timing: the KV cache and batching ------------------------------------------------


def synchronize() -> None:
    """Wait for queued GPU work, so a clock read measures it: CUDA kernels run
    asynchronously (no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@torch.no_grad()
def step_latency(
    model,
    context_length: int,
    *,
    use_cache: bool,
    batch_size: int = 1,
    repeats: int = 3,
    seed: int = 0,
):
    """Seconds to produce *one* new token after ``context_length`` tokens (median of
    ``repeats``).

    With the cache the prefix's keys and values are computed beforehand (untimed) and
    the step runs the model on one token; without it the step runs the model on all
    ``context_length + 1`` tokens.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.randint(
        0, model.config.vocab_size, (batch_size, context_length + 1), generator=gen
    ).to(device)
    times = []
    for _ in range(repeats):
        if use_cache:
            past = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
            synchronize()
            start = time.perf_counter()
            model(input_ids=ids[:, -1:], past_key_values=past, use_cache=True)
        else:
            synchronize()
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
        synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def time_generation(
    model, input_ids: torch.Tensor, max_new_tokens: int, *, use_cache: bool, **kw
) -> float:
    """Wall-clock seconds of :func:`generate` (greedy, no early stop) for
    ``max_new_tokens`` tokens."""
    synchronize()
    start = time.perf_counter()
    out = generate(model, input_ids, max_new_tokens, use_cache=use_cache, **kw)
    synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape[1] == input_ids.shape[1] + max_new_tokens
    return elapsed


def kv_cache_bytes(
    config, context_length: int, batch_size: int = 1, bytes_per_value: int = 4
) -> int:
    """Memory of a full KV cache: 2 (K and V) · layers · batch · kv_heads · context ·
    head_dim · bytes."""
    head_dim = (
        getattr(config, "head_dim", None)
        or config.hidden_size // config.num_attention_heads
    )
    kv_heads = (
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    )
    return (
        2
        * config.num_hidden_layers
        * batch_size
        * kv_heads
        * context_length
        * head_dim
        * bytes_per_value
    )


def batch_throughput(
    model, tokenizer, prompts: Sequence[str], batch_size: int, max_new_tokens: int
) -> dict:
    """Generate ``max_new_tokens`` greedy tokens for each prompt, ``batch_size`` prompts
    at a time (left padded, no early stop), and return
    ``{"batch_size", "latency_s" (per batch), "tokens_per_s" (new tokens/s)}``."""
    if batch_size < 1 or batch_size > len(prompts):
        raise ValueError(
            f"batch_size must be between 1 and len(prompts)={len(prompts)}, got "
            f"{batch_size}"
        )
    n_batches = len(prompts) // batch_size
    synchronize()
    start = time.perf_counter()
    for b in range(n_batches):
        ids, mask = left_pad(tokenizer, prompts[b * batch_size : (b + 1) * batch_size])
        generate(model, ids, max_new_tokens, attention_mask=mask)
    synchronize()
    elapsed = time.perf_counter() - start
    return {
        "batch_size": batch_size,
        "latency_s": elapsed / n_batches,
        "tokens_per_s": n_batches * batch_size * max_new_tokens / elapsed,
    }


# --- a toy attention layer with a cache, for the explanation --------------------------


class ToyCachedAttention(torch.nn.Module):
    """One causal self-attention head with a KV cache, to show the shapes (chapter 5).

    ``forward(x, cache)``: ``x`` is ``(B, n_new, d)``; the new keys/values
    ``(B, n_new, d)`` are appended to ``cache = (K, V)`` of shape ``(B, n_past, d)``;
    the queries of the new positions attend over all ``n_past + n_new`` keys (causally).
    Returns ``(out (B, n_new, d), (K, V) of (B, n_past + n_new, d))``.
    """

    def __init__(self, d: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w_q, self.w_k, self.w_v = (
            torch.nn.Parameter(torch.randn(d, d, generator=gen) / d**0.5)
            for _ in range(3)
        )

    def forward(
        self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None
    ):
        from book_utils.attention import causal_mask, scaled_dot_product_attention

        q, k, v = x @ self.w_q, x @ self.w_k, x @ self.w_v
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=1), torch.cat([cache[1], v], dim=1)
        n_new, n_all = q.shape[1], k.shape[1]
        # query i (absolute position n_all - n_new + i) may see keys 0 .. its own
        # position
        mask = causal_mask(n_all, n_all, device=x.device)[n_all - n_new :]
        out, _ = scaled_dot_product_attention(q, k, v, mask)
        return out, (k, v)
