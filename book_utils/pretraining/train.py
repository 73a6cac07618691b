"""The training loop: :func:`build_model`, AdamW with weight decay on matrices only
(``_optimizer``) and the warmup + cosine schedule (``_scheduler``), one optimizer step
(:func:`train_step`), and :func:`train` around it (periodic evaluation and samples,
resumable checkpoints, data parallelism with ``torch.distributed`` under ``torchrun``
or ``accelerate launch``); :func:`tokens_per_second` reads a run's throughput.

Chapter 3.2, book/03_pretraining/02_causal_lm.ipynb (it shows :func:`train_step` and
the loop of :func:`train`); chapter 4c's mid-training reuses :func:`train`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from book_utils.pretraining.checkpoint import load_checkpoint, save_checkpoint
from book_utils.pretraining.config import ModelConfig, TrainConfig, lr_at
from book_utils.pretraining.data import batch_indices
from book_utils.pretraining.evaluate import _block_loss

#: A prompt in the corpus's own format (a speaker's name line), used for the samples
#: printed while training.
SAMPLE_PROMPT = "\n\nJuliet.\n"


def build_model(cfg: ModelConfig, tokenizer=None, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` of shape ``cfg`` (same seed, same
    weights); chapter 3."""
    from transformers import LlamaForCausalLM

    ids = {}
    if tokenizer is not None:
        ids = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg.to_llama(**ids))


def count_parameters(model) -> int:
    """Number of distinct parameters (a tied embedding/LM-head matrix counted once)."""
    return sum(p.numel() for p in model.parameters())


def _optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only, not on norm
    weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for p in params if p.dim() >= 2],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _scheduler(optimizer, cfg: TrainConfig):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, cfg) / cfg.lr
    )


def _dist() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_reduce_sum(values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _sample(model, tokenizer, prompt: str, max_new_tokens: int, seed: int) -> str:
    """A continuation of ``prompt`` sampled with :func:`book_utils.decoding.generate`
    (temperature 0.8, top-k 40) and a seeded generator of its own, so printing samples
    never changes the training run's random state (chapter 3). The prompt is cropped
    to its last tokens so that prompt and continuation fit in the model's context."""
    from book_utils.decoding import DecodingConfig, generate

    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = ids or [tokenizer.eos_token_id]
    context = model.config.max_position_embeddings
    ids = ids[-max(1, context - max_new_tokens) :]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = generate(
        model,
        torch.tensor([ids], device=device),
        max(1, min(max_new_tokens, context - len(ids))),
        DecodingConfig(do_sample=True, temperature=0.8, top_k=40),
        eos_token_id=tokenizer.eos_token_id,
        use_cache=False,
        generator=torch.Generator().manual_seed(seed),
    )
    model.train(was_training)
    return tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)


def new_history() -> dict:
    """The record :func:`train` keeps: per step (lr, loss, gradient norm), per
    evaluation, samples, costs."""
    return {
        "step": [],
        "lr": [],
        "train_loss": [],
        "grad_norm": [],
        "eval_step": [],
        "val_loss": [],
        "samples": [],
        "tokens": 0,
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "world_size": 1,
    }


def train_step(
    net, x, optimizer, scheduler, grad_clip: float, *, autocast=None, scaler=None
):
    """One optimizer step of next-token training on the token blocks ``x``: forward
    (``labels=input_ids``: the model shifts them by one), backward, gradient clipping,
    AdamW step, learning-rate schedule step. ``net`` is the model, or the model wrapped
    in ``DistributedDataParallel``, whose backward also averages the gradients across
    processes. Returns ``(loss, gradient norm before clipping, learning rate)``."""
    autocast = autocast or contextlib.nullcontext()
    scaler = scaler or torch.amp.GradScaler(enabled=False)  # fp16 needs a real one
    with autocast:
        loss = net(input_ids=x, labels=x, use_cache=False).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)  # with scaling off (fp32, bf16): optimizer.step()
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), float(grad_norm), lr


def train(
    model,
    data,
    cfg: TrainConfig,
    *,
    checkpoint_dir=None,
    tokenizer=None,
    sample_prompt: str | None = None,
    sample_tokens: int = 48,
    progress: bool = True,
    desc: str = "pretraining",
    dtype: torch.dtype | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] | None = print,
    stop_after: int | None = None,
) -> dict:
    """Pretrain ``model`` on ``data["train"]`` blocks with next-token cross-entropy;
    returns the history.

    Each step: a global batch of blocks (:func:`batch_indices`), forward with
    ``labels=input_ids`` (the model shifts them by one), backward, gradient clipping to
    ``cfg.grad_clip``, AdamW step, schedule step (:func:`lr_at`). Every ``eval_every``
    steps (and at step 0 and the end) the mean loss on ``eval_blocks`` validation
    blocks spread evenly over the validation split is recorded and, with a tokenizer
    and ``sample_prompt``, a sample is generated and logged. Every
    ``checkpoint_every`` steps a checkpoint is written to ``checkpoint_dir``
    (atomically); if one is there already, training resumes from it and a finished run
    returns at once. Chapter 3.

    Under ``torch.distributed`` (``torchrun``), the model is wrapped in
    ``DistributedDataParallel``: each process computes the loss on its share of the
    global batch, gradients are averaged by all-reduce, logged losses are all-reduced,
    and only rank 0 logs and writes checkpoints. ``on_step(step, history)`` is called
    after each step (tests use it to interrupt a run). ``stop_after`` ends the loop
    after that many steps of the schedule (no final evaluation or checkpoint): chapter
    3 replays the start of a run. ``dtype`` bfloat16/float16 turns on autocast (mixed
    precision) on GPUs; float16 also scales the loss (``torch.amp.GradScaler``: fp16
    gradients underflow without it; a step whose gradients overflow is skipped). The
    scaler's state is not checkpointed: a resumed fp16 run restarts from its initial
    scale.
    """
    from tqdm.auto import tqdm

    rank, world = _dist()
    device = next(model.parameters()).device
    blocks, all_val = data["train"]["input_ids"], data["validation"]["input_ids"]
    # a fixed, evenly spread subset of the validation blocks (the first ones would be a
    # play's front matter)
    n_val = min(cfg.eval_blocks, len(all_val))
    val_blocks = all_val[torch.linspace(0, len(all_val) - 1, n_val).long()]
    n_blocks = len(blocks)
    batch_indices(n_blocks, cfg.batch_size, 0, cfg.seed, rank, world)  # checks sizes
    model.train()
    optimizer = _optimizer(model, cfg)
    scheduler = _scheduler(optimizer, cfg)
    history, start = new_history(), 0
    if checkpoint_dir is not None:
        state = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, cfg)
        if state is not None:
            history, start = state["history"], state["step"]
            if log and rank == 0 and start:
                log(f"resumed from {checkpoint_dir} at step {start}/{cfg.max_steps}")
    history["world_size"] = world
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    mixed = dtype in (torch.bfloat16, torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=mixed)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def evaluate(step: int) -> None:
        began = time.perf_counter()
        model.eval()
        with autocast:
            total, count = _block_loss(model, val_blocks, 16, rank, world)
        if world > 1:
            total, count = _all_reduce_sum([total, count], device)
        history["eval_step"].append(step)
        history["val_loss"].append(total / count)
        text = None
        if rank == 0 and tokenizer is not None and sample_prompt is not None:
            text = _sample(model, tokenizer, sample_prompt, sample_tokens, cfg.seed)
            history["samples"].append([step, text])
        model.train()
        history["eval_seconds"] += time.perf_counter() - began
        if log and rank == 0:
            line = f"step {step:5d} | val loss {total / count:.4f}"
            if history["train_loss"]:
                recent = history["train_loss"][-cfg.eval_every :]
                line += (
                    f" | train loss {sum(recent) / len(recent):.4f} "
                    f"(mean of last {len(recent)} steps)"
                )
            if text is not None:
                line += f"\n    sample: {sample_prompt.strip()!s} {text!r}"
            log(line)

    if start == 0 and not history["eval_step"]:
        evaluate(0)
    bar = tqdm(
        total=cfg.max_steps,
        initial=start,
        desc=desc,
        disable=not progress or rank != 0,
        leave=False,
    )
    last = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    # the loop (chapter 3.2 shows it from here)
    for step in range(start, last):
        began = time.perf_counter()
        idx = batch_indices(n_blocks, cfg.batch_size, step, cfg.seed, rank, world)
        x = blocks[idx].to(device)  # this process's share of the global batch
        loss_value, grad_norm, lr = train_step(
            net,
            x,
            optimizer,
            scheduler,
            cfg.grad_clip,
            autocast=autocast,
            scaler=scaler,
        )
        if world > 1:
            loss_value = _all_reduce_sum([loss_value], device)[0] / world
        history["train_seconds"] += time.perf_counter() - began
        history["tokens"] += cfg.batch_size * x.shape[1]
        record = dict(step=step + 1, lr=lr, train_loss=loss_value, grad_norm=grad_norm)
        for key, value in record.items():
            history[key].append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
        done = step + 1
        if done == stop_after and done < cfg.max_steps:
            break
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            evaluate(done)
        due = done % cfg.checkpoint_every == 0 or done == cfg.max_steps
        if checkpoint_dir is not None and due:
            if rank == 0:
                state = (model, optimizer, scheduler, done, history, cfg)
                save_checkpoint(checkpoint_dir, *state)
            if world > 1:
                torch.distributed.barrier()
        if on_step is not None:
            on_step(done, history)
    # (to here)
    bar.close()
    model.eval()
    return history


def tokens_per_second(history: dict) -> float:
    """Training throughput of a run: tokens processed per second of training steps
    (evaluation excluded)."""
    if not history["train_seconds"]:
        return float("nan")
    return history["tokens"] / history["train_seconds"]
