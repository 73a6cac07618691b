"""Check the book's GPU code path for real and measure what the full-profile runs cost \
on a GPU.

    # every check, full profile, on CUDA
    BOOK_CACHE=<cache> python scripts/check_gpu_path.py
    # some checks; also write the table there
    python scripts/check_gpu_path.py --only pretrain sft --out results/
    # a quick syntax test on a CPU
    python scripts/check_gpu_path.py --allow-cpu --tiny --only decoding

Every notebook is developed on a CPU; this maintainer tool runs the CUDA branches of
``book_utils`` (device placement, bf16 autocast in ``pretraining.train``, bf16/fp16
``TrainingArguments`` from ``instruction_tuning.mixed_precision_flags``, CUDA sampling
in ``decoding``, the cuda model behind the HTTP service) with the book's ``full``
recipes and prints one table:

1. ``pretrain``: chapter 3's base model trained exactly as
   ``pretraining.pretrain_base_model`` does it (``run_cli`` on ``default_nproc``
   processes, then ``load_trained`` / ``save_base_model``), into a separate cache folder
   so the cached CPU model is kept; wall time, tokens/s, final validation loss and test
   bits/char against the CPU run's ``history.json`` in the cache; the nanoGPT character
   anchor run too.
2. ``sft``: chapter 4c's ``instruction_tuning.train_sft_model`` (``Trainer``, bf16 on
   CUDA); wall time, tokens/s, validation loss, closed-task accuracy
   (``evaluate_closed``), against ``sft_info.json``.
3. ``decoding``: ``decoding.generate`` against ``model.generate`` token for token on
   CUDA (greedy and sampled strategies, same seeds), left-padded batches, and the
   KV-cache speedup at 256 new tokens.
4. ``smollm2``: SmolLM2-135M's shape (``--smollm2-shape``: a folder with its
   ``config.json`` and tokenizer; random weights when no ``model.safetensors`` is there,
   which is fine for timing): KV-cache latency and speedup, batching, and chapter 4c's
   fine-tuning steps (full with ``Trainer``, LoRA with TRL).
5. ``compression``: ``compression`` on a cuda model (evaluation, bf16 cast, int8,
   pruning, distillation, ONNX export); 6. ``serving``: ``create_app`` around a cuda
   model behind ``BackgroundServer``, with a load test; 7. ``benchmark``:
   ``scripts/benchmark_pretraining.py`` (eager and ``torch.compile``).

A check that crashes is a FAIL row whose note names the innermost ``book_utils`` frame
(file:line); the tracebacks are printed after the table. Results go to
``$BOOK_CACHE/<profile>/gpu-check/`` (and ``--out``): ``table.txt`` and
``results.json``. The exit status is 1 when any check failed. Without CUDA the script
says so and exits 0, unless ``--allow-cpu`` is given (add ``--tiny`` for a few steps of
each run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# the pretraining run is a subprocess (python -m book_utils.pretraining): it must find
# the package too
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
)

CHECKS = (
    "pretrain",
    "sft",
    "decoding",
    "compression",
    "serving",
    "smollm2",
    "benchmark",
)

#: CPU figures the committed notebooks print (full profile, a 2-core CPU), for the
#: table's CPU column where the cache holds no record of its own. Update them when the
#: notebooks are refreshed.
BOOK_CPU = {
    "pretrain_test_bpc": 2.0998,  # 3.2, cell "validation: ... test: ..."
    # 3.2, nanoGPT anchor: 2000 iterations in 1.7 min (2 threads)
    "anchor_seconds": 1.7 * 60,
    "anchor_tokens_per_s": 14797,
    "anchor_val_loss": 1.703,
    # 4c, "400 steps in 119 s" (with 5 evaluations of the validation split)
    "sft_seconds": 119.0,
    "sft_tokens_per_s": 4947,
    "sft_accuracy": 0.346,  # 4c, closed-task accuracy of the SFT model, 457 test items
    # 256 new tokens after a 16-token prompt, with / without the cache (6.1x; 5.1 now
    # uses a 64-token chat prompt)
    "smollm2_kv_seconds": (19.6, 120.1),
    "smollm2_step_s": 15.2,  # 4c LoRA section: full fine-tuning s/step (16 steps of 4)
    "smollm2_lora_step_s": 11.5,
}


# --- the report -----------------------------------------------------------------------


def _where(error: BaseException) -> str:
    """The innermost frame of the traceback inside book_utils (else the innermost of
    all), as file:line."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "book_utils" in f.filename] or frames
    if not ours:
        return "?"
    frame = ours[-1]
    path = Path(frame.filename)
    try:
        path = path.relative_to(ROOT)
    except ValueError:
        path = Path(*path.parts[-2:])
    return f"{path}:{frame.lineno}"


class Report:
    """Rows of (check, status, what, gpu, cpu, note), the tracebacks of failures, raw
    numbers; saved after every row."""

    def __init__(self, out_dirs: list[Path], device: str):
        self.rows: list[dict] = []
        self.errors: dict[str, str] = {}
        self.data: dict = {"device": device}
        self.out_dirs = out_dirs

    def add(
        self, check: str, status: str, what: str, gpu="", cpu="", note: str = ""
    ) -> None:
        row = {
            "check": check,
            "status": status,
            "what": what,
            "gpu": _fmt(gpu),
            "cpu": _fmt(cpu),
            "note": note,
        }
        self.rows.append(row)
        print(
            f"[{status:4}] {check:11} {what}: {row['gpu']}"
            + (f" (CPU {row['cpu']})" if row["cpu"] else "")
            + (f" -- {note}" if note else ""),
            flush=True,
        )
        self.save()

    @contextlib.contextmanager
    def guard(self, check: str, what: str):
        """Run a block; an exception becomes a FAIL row (with the book_utils file:line)
        and the block is left."""
        try:
            yield
        except Exception as error:  # noqa: BLE001
            # every failure is reported, the other checks go on
            key = f"{check}: {what}"
            self.errors[key] = traceback.format_exc()
            self.add(
                check,
                "FAIL",
                what,
                note=f"{type(error).__name__} at {_where(error)}: "
                f"{str(error).splitlines()[0][:160] if str(error) else ''}",
            )

    @property
    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)

    def table(self) -> str:
        heads = ("check", "status", "what", "gpu", "cpu", "note")
        widths = {"check": 11, "status": 6, "what": 60, "gpu": 24, "cpu": 14, "note": 0}
        lines = [" | ".join(h.ljust(widths[h]) if widths[h] else h for h in heads)]
        lines.append("-" * 160)
        for r in self.rows:
            cells = [
                str(r[h])[: widths[h]].ljust(widths[h]) if widths[h] else str(r[h])
                for h in heads
            ]
            lines.append(" | ".join(cells))
        return "\n".join(lines)

    def save(self) -> None:
        for folder in self.out_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "table.txt").write_text(self.table() + "\n")
            (folder / "results.json").write_text(
                json.dumps(
                    {"rows": self.rows, "data": self.data, "errors": self.errors},
                    indent=1,
                    default=str,
                )
            )


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


# --- helpers --------------------------------------------------------------------------


def timed(fn):
    """``(result, seconds)`` of ``fn()`` with the GPU synchronised before and after
    (wall clock)."""
    from book_utils.decoding import synchronize as sync

    sync()
    began = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - began


@contextlib.contextmanager
def cache_root_at(folder: Path):
    """Point ``BOOK_CACHE`` (read on every ``cache.artifact_dir`` call, and by
    subprocesses) at ``folder``."""
    old = os.environ.get("BOOK_CACHE")
    os.environ["BOOK_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("BOOK_CACHE", None)
        else:
            os.environ["BOOK_CACHE"] = old


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def device_of(model):
    return next(model.parameters()).device


# --- 1. pretraining -------------------------------------------------------------------


def check_pretrain(ctx, rep: Report, args, work: Path) -> None:
    import torch

    from book_utils import assets
    from book_utils import pretraining as pt
    from book_utils.cache import artifact_dir, is_complete
    from book_utils.tokenization import default_vocab_size, load_or_train_tokenizer

    cpu_history = (
        read_json(pt.base_model_dir(ctx.profile) / "model" / "history.json") or {}
    )
    nproc = pt.default_nproc(ctx.device)
    rep.add(
        "pretrain",
        "PASS" if ctx.device.type != "cuda" or nproc == 1 else "FAIL",
        "default_nproc(device)",
        nproc,
        cpu_history.get("world_size", ""),
        "1 process per GPU; the CPU run used one per core",
    )
    # a separate cache: the run starts from scratch (no checkpoint to resume) and the
    # cached CPU model stays
    scratch = work / "pretrain-cache"
    shutil.rmtree(scratch, ignore_errors=True)
    tokenizer_name = f"tokenizer-bpe{default_vocab_size(ctx.profile)}"
    source = artifact_dir(tokenizer_name, ctx.profile)
    if is_complete(source):
        shutil.copytree(source, scratch / ctx.profile / tokenizer_name)
    overrides = {"max_steps": args.tiny_steps} if args.tiny else {}
    with cache_root_at(scratch):
        tokenizer = load_or_train_tokenizer(ctx.profile)
        model_cfg, train_cfg = pt.preset(
            "base", ctx.profile, len(tokenizer), seed=ctx.seed, **overrides
        )
        checkpoint_dir = pt.run_checkpoint_dir(
            ctx.profile, "base", model_cfg, train_cfg
        )
        argv = [
            "--preset",
            "base",
            "--profile",
            ctx.profile,
            "--seed",
            str(ctx.seed),
            "--checkpoint-dir",
            str(checkpoint_dir),
        ]
        if args.tiny:
            argv += ["--max-steps", str(args.tiny_steps)]
        began = time.perf_counter()
        run = pt.run_cli(
            argv, nproc=nproc
        )  # what pretrain_base_model runs (chapter 3's cell)
        call_seconds = time.perf_counter() - began
        model = pt.load_trained(checkpoint_dir).to(ctx.device)
        pt.save_base_model(ctx.profile, model, tokenizer, run["history"])
        loaded, _ = pt.load_base_model(profile=ctx.profile, device=ctx.device)
        gpu_model_dir = pt.base_model_dir(ctx.profile) / "model"
    history = run["history"]
    rep.data["pretrain"] = {
        k: v for k, v in run.items() if k not in ("history", "stdout")
    }
    rep.data["pretrain"]["history"] = {
        k: history[k]
        for k in (
            "eval_step",
            "val_loss",
            "tokens",
            "train_seconds",
            "eval_seconds",
            "world_size",
        )
    }
    rep.data["pretrain"]["stdout_tail"] = run["stdout"][-2000:]
    rep.data["pretrain_model_dir"] = str(gpu_model_dir)
    rep.add(
        "pretrain",
        "INFO",
        "run command",
        run["command"].replace(str(checkpoint_dir), "<scratch>/base-checkpoint"),
    )
    rep.add(
        "pretrain",
        "PASS" if device_of(loaded).type == ctx.device.type else "FAIL",
        "load_base_model device",
        str(device_of(loaded)),
    )
    cpu_wall = cpu_history.get("train_seconds", 0) + cpu_history.get("eval_seconds", 0)
    rep.add(
        "pretrain",
        "INFO",
        "whole run_cli call, s (start, data, train, eval)",
        call_seconds,
        "",
        "includes Python start-up and tokenizing the corpus",
    )
    rep.add(
        "pretrain",
        "INFO",
        "training + evaluation, s (history)",
        history["train_seconds"] + history["eval_seconds"],
        cpu_wall or "",
    )
    rep.add(
        "pretrain",
        "INFO",
        "training steps, s",
        history["train_seconds"],
        cpu_history.get("train_seconds", ""),
        f"{train_cfg.max_steps} steps of "
        f"{train_cfg.batch_size}x{model_cfg.block_size} tokens",
    )
    cpu_rate = pt.tokens_per_second(cpu_history) if cpu_history else ""
    rep.add(
        "pretrain",
        "INFO",
        "tokens/s (training steps)",
        pt.tokens_per_second(history),
        cpu_rate,
    )
    gpu_val = history["val_loss"][-1]
    cpu_val = cpu_history.get("val_loss", [None])[-1]
    if not math.isfinite(gpu_val):
        status = "FAIL"
    elif cpu_val is None or args.tiny:
        status = "INFO"
    else:
        status = "PASS" if abs(gpu_val - cpu_val) < 0.1 else "FAIL"
    rep.add(
        "pretrain",
        status,
        "final validation loss (nats/token)",
        gpu_val,
        cpu_val if cpu_val is not None else "",
        "bf16 autocast, 1 process vs fp32 on 2 processes: same global batches; "
        "|diff| < 0.1 expected",
    )
    with rep.guard("pretrain", "test bits/char (score_text on cuda)"):
        splits = assets.shakespeare_splits()
        test_text = assets.join_works(splits["test"])[: 20_000 if args.tiny else None]
        stride = model_cfg.block_size // 2
        # runs before the del at the end: F821 is a ruff false positive (ruff#22452)
        score, seconds = timed(
            lambda: pt.score_text(
                loaded,  # noqa: F821
                tokenizer,
                test_text,
                stride=stride,
                batch_size=16,
            )
        )
        note = f"{seconds:.1f} s to score {score.n_tokens:,} tokens"
        cpu_bpc = BOOK_CPU["pretrain_test_bpc"]
        cpu_model_dir = pt.base_model_dir(ctx.profile) / "model"
        if is_complete(cpu_model_dir):
            cpu_model, _ = pt.load_base_model(profile=ctx.profile, device=ctx.device)
            cpu_bpc = pt.score_text(
                cpu_model, tokenizer, test_text, stride=stride, batch_size=16
            ).bpc
            note += "; CPU column: the cached CPU-trained model scored here"
            del cpu_model
        rep.add(
            "pretrain",
            "INFO"
            if args.tiny
            else ("PASS" if abs(score.bpc - cpu_bpc) < 0.05 else "FAIL"),
            "test bits/char, GPU-trained model",
            score.bpc,
            cpu_bpc,
            note,
        )
    with rep.guard("pretrain", "nanoGPT character anchor (pt.train in-process)"):
        splits = assets.shakespeare_splits()
        char_tokenizer = pt.char_tokenizer(assets.join_works(splits["train"]))
        anchor_cfg, anchor_train = pt.preset(
            "nanogpt-char", ctx.profile, len(char_tokenizer), seed=ctx.seed, **overrides
        )
        char_data = pt.shakespeare_lm_data(
            char_tokenizer, anchor_cfg.block_size, ctx.profile
        )
        # the notebook's call: no dtype, so fp32 even on a GPU; then the same with the
        # bf16 run_cli uses
        for label, dtype in (
            ("fp32 (as chapter 3 calls it)", None),
            ("bf16 autocast", ctx.dtype),
        ):
            anchor = pt.build_model(anchor_cfg, char_tokenizer, seed=ctx.seed).to(
                ctx.device
            )
            hist, seconds = timed(
                lambda: pt.train(
                    anchor,
                    char_data,
                    anchor_train,
                    log=None,
                    progress=False,
                    dtype=dtype,
                )
            )
            rep.add(
                "pretrain",
                "INFO",
                f"anchor {label}: wall s / chars/s",
                f"{seconds:.1f} / {pt.tokens_per_second(hist):,.0f}",
                f"{BOOK_CPU['anchor_seconds']:.0f} / "
                f"{BOOK_CPU['anchor_tokens_per_s']:,}",
            )
            rep.add(
                "pretrain",
                "INFO",
                f"anchor {label}: final val loss",
                hist["val_loss"][-1],
                BOOK_CPU["anchor_val_loss"],
            )
    del model, loaded
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- 2. instruction tuning ------------------------------------------------------------


def check_sft(ctx, rep: Report, args, work: Path) -> None:
    import torch

    from book_utils import instruction_tuning as it
    from book_utils import pretraining as pt
    from book_utils import sft_data
    from book_utils.cache import is_complete

    flags = it.mixed_precision_flags(ctx.device)
    expected = (
        {"bf16": True, "fp16": False}
        if ctx.device.type == "cuda" and torch.cuda.is_bf16_supported()
        else None
    )
    rep.add(
        "sft",
        "PASS" if expected is None or flags == expected else "FAIL",
        "mixed_precision_flags(device)",
        str(flags),
    )
    base_dir = pt.base_model_dir(ctx.profile) / "model"
    if is_complete(base_dir):
        base_note = "base model: the cached (CPU-trained) one, as for the CPU figures"
    elif rep.data.get("pretrain_model_dir"):
        shutil.copytree(rep.data["pretrain_model_dir"], base_dir)
        base_note = "base model: the GPU-trained one (no CPU model in the cache)"
    else:
        base_note = "base model: trained now by load_base_model"
    cpu_info = read_json(it.sft_model_dir(ctx.profile) / "sft_info.json") or {}
    overrides = {"max_steps": args.tiny_steps} if args.tiny else {}
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    model, tok, run = it.train_sft_model(
        profile=ctx.profile,
        device=ctx.device,
        seed=ctx.seed,
        output_dir=str(work / "sft-run"),
        **overrides,
    )
    wall = time.perf_counter() - began
    trainer_args = run["trainer"].args
    rep.add(
        "sft",
        "PASS"
        if expected is None or (trainer_args.bf16, trainer_args.fp16) == (True, False)
        else "FAIL",
        "TrainingArguments bf16/fp16, model device",
        f"{trainer_args.bf16}/{trainer_args.fp16}, {device_of(model)}",
        "",
        base_note,
    )
    rep.data["sft"] = {k: v for k, v in run.items() if k not in ("trainer", "log")}
    rep.add("sft", "INFO", "train_sft_model wall s (load, tokenize, train, eval)", wall)
    rep.add(
        "sft",
        "INFO",
        "Trainer.train s / s per step",
        f"{run['seconds']:.1f} / {run['seconds_per_step']:.3f}",
        f"{BOOK_CPU['sft_seconds']:.0f} / {BOOK_CPU['sft_seconds'] / 400:.2f}",
        f"{run['steps']} steps; CPU figure is the notebook's run, "
        "which also evaluated 5 times",
    )
    rep.add(
        "sft",
        "INFO",
        "tokens/s (non-padding)",
        run["tokens_per_second"],
        BOOK_CPU["sft_tokens_per_s"],
    )
    if "cuda_peak" in run["memory"]:
        rep.add(
            "sft",
            "INFO",
            "CUDA peak memory, MB",
            run["memory"]["cuda_peak"] / 1e6,
            "",
            f"training_memory estimate {run['memory']['total'] / 1e6:.1f} MB (fp32)",
        )
    cpu_val = cpu_info.get("val_loss")
    status = (
        "INFO"
        if args.tiny or cpu_val is None
        else ("PASS" if abs(run["val_loss"] - cpu_val) < 0.05 else "FAIL")
    )
    rep.add(
        "sft",
        status,
        "validation loss (masked, nats/token)",
        run["val_loss"],
        cpu_val if cpu_val is not None else "",
    )
    with rep.guard("sft", "autocast inside the Trainer (bf16 probe)"):
        from torch.nn.modules.module import register_module_forward_hook

        seen = set()

        def hook(module, inputs, output):
            if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
                seen.add(str(output.dtype).removeprefix("torch."))

        handle = register_module_forward_hook(hook)
        try:
            _, _, probe = it.train_sft_model(
                profile=ctx.profile,
                device=ctx.device,
                seed=ctx.seed,
                output_dir=str(work / "sft-probe"),
                max_steps=2,
            )
        finally:
            handle.remove()
        rep.add(
            "sft",
            "PASS" if expected is None or "bfloat16" in seen else "FAIL",
            "nn.Linear output dtypes in a 2-step train_sft_model",
            ", ".join(sorted(seen)),
            "",
            "accelerator.mixed_precision="
            f"{probe['trainer'].accelerator.mixed_precision}",
        )
        del probe
    model.save_pretrained(work / "sft-model-gpu")
    tok.save_pretrained(work / "sft-model-gpu")
    with rep.guard("sft", "closed-task accuracy (evaluate_closed on cuda)"):
        data = sft_data.load_or_build_sft_dataset(ctx.profile)
        context = it.sft_context(model, profile=ctx.profile)
        test = it.fits_context(
            it.closed_records(data["test"], limit_per_task=8 if args.tiny else None),
            tok,
            context,
            reserve=12,
        )
        # runs before the del at the end: F821 is a ruff false positive (ruff#22452)
        frame, seconds = timed(
            lambda: it.evaluate_closed(
                model,  # noqa: F821
                tok,
                test,
                max_new_tokens=12,
                context=context,
            )
        )
        table = it.score_table(frame)
        rep.data["sft_scores"] = table.round(4).to_dict()
        status = (
            "INFO"
            if args.tiny
            else ("PASS" if table.loc["all", "format_ok"] > 0.9 else "FAIL")
        )
        rep.add(
            "sft",
            status,
            "accuracy, GPU-tuned model (all tasks)",
            float(table.loc["all", "accuracy"]),
            BOOK_CPU["sft_accuracy"],
            f"{len(test)} items in {seconds:.1f} s; "
            f"format ok {table.loc['all', 'format_ok']:.3f}",
        )
        cpu_dir = it.sft_model_dir(ctx.profile)
        if is_complete(cpu_dir):
            cpu_model, cpu_tok = pt.load_saved_llama(
                cpu_dir,
                ctx.device,
                what="the SFT model",
                retry="load_or_train_sft_model",
            )
            frame_cpu = it.evaluate_closed(
                cpu_model, cpu_tok, test, max_new_tokens=12, context=context
            )
            acc = float(frame_cpu["correct"].mean())
            status = (
                "INFO"
                if args.tiny
                else ("PASS" if abs(acc - BOOK_CPU["sft_accuracy"]) <= 0.01 else "FAIL")
            )
            rep.add(
                "sft",
                status,
                f"accuracy, cached CPU-tuned model run on {ctx.device.type}",
                acc,
                BOOK_CPU["sft_accuracy"],
                "same weights, greedy on the GPU: should match the CPU figure",
            )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- 3. decoding ----------------------------------------------------------------------


def held_out_prompts(
    tokenizer, n_prompts: int = 48, prompt_len: int = 16, new_len: int = 96
):
    from book_utils.assets import shakespeare_splits
    from book_utils.pretraining import held_out_excerpt

    held_out = held_out_excerpt(shakespeare_splits()["test"], 20000)
    stream = tokenizer(held_out, add_special_tokens=False)["input_ids"]
    span = prompt_len + new_len
    return held_out, [
        stream[i * span : i * span + prompt_len] for i in range(n_prompts)
    ]


def kv_rows(
    rep: Report,
    check: str,
    model,
    prompt_ids,
    n_new: int,
    label: str,
    cpu=("", ""),
    repeats: int = 1,
) -> None:
    """KV-cache speedup of ``n_new`` greedy tokens (median of ``repeats``), as
    ``decoding.time_generation`` measures it (the GPU synchronised around each call)."""
    import statistics

    import torch

    from book_utils import decoding as dec

    runs = ([], [])
    with torch.inference_mode():
        dec.generate(model, prompt_ids, 4)  # warm-up (kernels, allocator)
        for _ in range(repeats):
            for i, use_cache in enumerate((True, False)):
                runs[i].append(
                    dec.time_generation(model, prompt_ids, n_new, use_cache=use_cache)
                )
    t_cache, t_full = (statistics.median(v) for v in runs)
    rep.add(
        check,
        "INFO",
        f"{label}: {n_new} tokens with/without cache, s",
        f"{t_cache:.2f} / {t_full:.2f}",
        f"{cpu[0]} / {cpu[1]}" if cpu[0] else "",
        f"speedup {t_full / t_cache:.2f}x (median of {repeats})",
    )
    rep.data.setdefault("kv", {})[f"{label} {n_new}"] = {
        "with cache": runs[0],
        "without": runs[1],
    }


STRATEGIES = {
    "greedy": {},
    "greedy + repetition penalty 1.3": dict(repetition_penalty=1.3),
    "greedy + no-repeat 3-gram": dict(no_repeat_ngram_size=3),
    "sampling, T=1": dict(do_sample=True),
    "T=0.7, top-k 40": dict(do_sample=True, temperature=0.7, top_k=40),
    "top-p 0.9": dict(do_sample=True, top_p=0.9),
    "top-p 0.9 + penalty 1.2": dict(do_sample=True, top_p=0.9, repetition_penalty=1.2),
}


def chat_prompts(ctx, tokenizer, context: int, reserve: int = 48, n: int = 48):
    """Chapter 5.1's requests: "continue" records from the held-out plays, rendered with
    the chat template."""
    from book_utils.assets import SHAKESPEARE_HELD_OUT
    from book_utils.instruction_tuning import fits_context
    from book_utils.sft_data import load_or_build_sft_dataset

    sft = load_or_build_sft_dataset(ctx.profile)
    unseen = {play for plays in SHAKESPEARE_HELD_OUT.values() for play in plays}
    records = [
        r
        for split in ("validation", "test")
        for r in sft[split]
        if r["task"] == "continue" and r["source_id"].split(":")[1] in unseen
    ]
    records = fits_context(records, tokenizer, context, reserve=reserve)[:n]
    texts = [
        tokenizer.apply_chat_template(
            r["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        for r in records
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def compare_generate(
    ctx, rep: Report, model, tokenizer, prompts, stops, label: str
) -> None:
    """decoding.generate against model.generate, token for token, on the device (7
    strategies x 2 seeds)."""
    import torch

    from book_utils import decoding as dec

    batch_ids, batch_mask = dec.left_pad(tokenizer, prompts)
    ids, mask = batch_ids.to(ctx.device), batch_mask.to(ctx.device)
    special = dict(eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    mismatched = []
    for name, kwargs in STRATEGIES.items():
        cfg = dec.DecodingConfig(**kwargs)
        for seed in (0, 1):
            torch.manual_seed(seed)
            ours = dec.generate(model, ids, 20, cfg, attention_mask=mask, **special)
            torch.manual_seed(seed)
            ref = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=20,
                **special,
                **cfg.generate_kwargs(),
            )
            if ours.tolist() != ref.tolist():
                mismatched.append(f"{name}/seed {seed}")
    rep.add(
        "decoding",
        "FAIL" if mismatched else "PASS",
        f"{label}: dec.generate == model.generate (7 x 2 seeds)",
        f"{14 - len(mismatched)}/14 identical",
        "14/14",
        "; ".join(mismatched),
    )


def check_decoding(ctx, rep: Report, args, work: Path) -> None:
    import torch

    from book_utils import decoding as dec
    from book_utils import instruction_tuning as it
    from book_utils.pretraining import load_base_model

    base, base_tok = load_base_model(profile=ctx.profile, device=ctx.device)
    _, prompts = held_out_prompts(base_tok)
    with rep.guard("decoding", "base model, plain-text prompts"):
        plain = [prompts[i][: 16 - 3 * i] for i in range(4)]
        compare_generate(
            ctx,
            rep,
            base,
            base_tok,
            plain,
            base_tok.eos_token_id,
            "base model, plain prompts",
        )
    with rep.guard("decoding", "SFT model, chat prompts (chapter 5.1's model)"):
        model, tokenizer = it.load_or_train_sft_model(
            profile=ctx.profile, device=ctx.device, seed=ctx.seed
        )
        stops = (
            dec.stop_token_ids(tokenizer)
            if hasattr(dec, "stop_token_ids")
            else tokenizer.eos_token_id
        )
        chats = chat_prompts(ctx, tokenizer, model.config.max_position_embeddings)
        compare_generate(
            ctx,
            rep,
            model,
            tokenizer,
            chats[:4],
            stops,
            "SFT model, chat prompts, stops " + str(stops),
        )
        batch_ids, batch_mask = dec.left_pad(tokenizer, chats[:4])
        with rep.guard(
            "decoding",
            "chapter 5.1's comparison cell as written (CPU inputs to model.generate)",
        ):
            torch.manual_seed(0)
            ref = model.generate(
                input_ids=batch_ids,
                attention_mask=batch_mask,
                max_new_tokens=20,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                **dec.DecodingConfig().generate_kwargs(),
            )
            ours = dec.generate(
                model,
                batch_ids,
                20,
                attention_mask=batch_mask,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
            rep.add(
                "decoding",
                "PASS" if ours.tolist() == ref.tolist() else "FAIL",
                "chapter 5.1's cell as written (CPU inputs to model.generate)",
                "ran, identical" if ours.tolist() == ref.tolist() else "ran, differs",
            )
        del model
    with rep.guard("decoding", "left-padded batch == one prompt at a time"):
        texts = [base_tok.decode(p[: 6 + 2 * i]) for i, p in enumerate(prompts[:4])]
        ids2, mask2 = dec.left_pad(base_tok, texts)
        batched = dec.generate(base, ids2, 12, attention_mask=mask2)[:, ids2.shape[1] :]
        same = all(
            row.tolist() == dec.generate(base, alone, 12)[0, alone.shape[1] :].tolist()
            for row, alone in (
                (
                    r,
                    base_tok(t, add_special_tokens=False, return_tensors="pt")[
                        "input_ids"
                    ],
                )
                for r, t in zip(batched, texts)
            )
        )
        rep.add(
            "decoding",
            "PASS" if same else "FAIL",
            "left-padded batch == one prompt at a time",
            str(same),
        )
    with rep.guard("decoding", "KV cache, base model"):
        prompt_ids = torch.tensor([prompts[0]])
        for n_new in (16,) if args.tiny else (112, 256):
            kv_rows(
                rep,
                "decoding",
                base,
                prompt_ids,
                n_new,
                "base model" + (" (past its 128-token context)" if n_new > 112 else ""),
                repeats=3,
            )
    with rep.guard("decoding", "step latency, base model"):
        with torch.inference_mode():
            for n in (16, 64, 128):
                a, b = (dec.step_latency(base, n, use_cache=c) for c in (True, False))
                rep.add(
                    "decoding",
                    "INFO",
                    f"base model: ms per new token at context {n} (with/without cache)",
                    f"{1000 * a:.2f} / {1000 * b:.2f}",
                    "",
                    "step_latency (GPU synchronised)",
                )
    del base


# --- 4. SmolLM2's shape ---------------------------------------------------------------


def load_smollm2_shape(folder: Path, device):
    """SmolLM2 from ``folder``: its weights when ``model.safetensors`` is there, else
    random weights of its shape."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if (folder / "model.safetensors").exists():
        return (
            tok,
            AutoModelForCausalLM.from_pretrained(folder).to(device).eval(),
            "real weights",
        )
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return tok, model.eval(), "random weights of SmolLM2-135M's shape (timing only)"


def check_smollm2(ctx, rep: Report, args, work: Path) -> None:
    import torch
    from peft import LoraConfig

    from book_utils import decoding as dec
    from book_utils import instruction_tuning as it
    from book_utils import sft_data
    from book_utils.cache import artifact_dir

    folder = (
        Path(args.smollm2_shape)
        if args.smollm2_shape
        else artifact_dir("smollm2-135m-instruct", ctx.profile)
    )
    if not (folder / "config.json").exists():
        rep.add(
            "smollm2",
            "SKIP",
            "SmolLM2-shaped timings",
            note=f"no config.json in {folder} (pass --smollm2-shape)",
        )
        return
    tok, big, kind = load_smollm2_shape(folder, ctx.device)
    rep.add(
        "smollm2",
        "INFO",
        "model",
        f"{sum(p.numel() for p in big.parameters()) / 1e6:.1f} M params",
        "",
        kind,
    )
    held_out, _ = held_out_prompts(tok, 1)
    prompt_ids = torch.tensor(
        [tok(held_out, add_special_tokens=False)["input_ids"][:16]]
    )
    with rep.guard("smollm2", "KV cache"):
        kv_rows(
            rep,
            "smollm2",
            big,
            prompt_ids,
            16 if args.tiny else 256,
            "SmolLM2 shape",
            BOOK_CPU["smollm2_kv_seconds"],
        )
        with torch.inference_mode():
            for n in (16,) if args.tiny else (16, 64, 128, 256):
                a, b = (dec.step_latency(big, n, use_cache=c) for c in (True, False))
                rep.add(
                    "smollm2",
                    "INFO",
                    f"ms per new token at context {n} (with/without cache)",
                    f"{1000 * a:.1f} / {1000 * b:.1f}",
                )
    with rep.guard("smollm2", "batch throughput"):
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        batch_prompts = [
            tok.decode(
                tok(held_out[i * 400 : i * 400 + 300], add_special_tokens=False)[
                    "input_ids"
                ][: 8 + 3 * (i % 5)]
            )
            for i in range(64)
        ]
        with torch.inference_mode():
            for b in (1, 2) if args.tiny else (1, 8, 64):
                r = dec.batch_throughput(
                    big, tok, batch_prompts[: max(b, 8)], b, 8 if args.tiny else 32
                )
                rep.add(
                    "smollm2",
                    "INFO",
                    f"batch {b}: new tokens/s, s per batch",
                    f"{r['tokens_per_s']:,.0f}, {r['latency_s']:.2f}",
                )
    data = sft_data.load_or_build_sft_dataset(ctx.profile)
    max_len = 112

    def sample(split, per_task):
        rows = it.fits_context(it.closed_records(data[split]), tok, max_len)
        return it.closed_records(rows, limit_per_task=per_task, seed=ctx.seed)

    settings = [("chapter 4c: 16 steps x 4", 16, 4, 16)]
    if not args.tiny:
        settings.append(
            ("exercise: all closed train records, batch 32, 1 epoch", None, 32, None)
        )
    for label, per_task, batch_size, steps in settings:
        with rep.guard("smollm2", f"fine-tuning, {label}"):
            train_rows = sample("train", 2 if args.tiny else per_task)
            val_rows = sample("validation", 4)
            train, _ = it.tokenize_records(train_rows, tok, max_len)
            val, _ = it.tokenize_records(val_rows, tok, max_len)
            steps = (
                args.tiny_steps if args.tiny else (steps or len(train) // batch_size)
            )
            full = copy.deepcopy(big)
            targs = it.training_arguments(
                work / "smol-full",
                seed=ctx.seed,
                device=ctx.device,
                learning_rate=1e-4,
                logging_steps=1,
                max_steps=steps,
                batch_size=batch_size,
            )
            run = it.train_sft(full.train(), tok, train, val, args=targs)
            cpu = BOOK_CPU["smollm2_step_s"] if batch_size == 4 else ""
            rep.add(
                "smollm2",
                "INFO",
                f"full FT ({label}): s/step, tokens/s",
                f"{run['seconds_per_step']:.3f}, {run['tokens_per_second']:,.0f}",
                cpu,
                f"{steps} steps, {len(train)} records, bf16={targs.bf16}, "
                f"train {run['seconds']:.1f} s, "
                f"CUDA peak {run['memory'].get('cuda_peak', 0) / 1e9:.2f} GB",
            )
            del full, run
            lora_config = LoraConfig(
                r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"
            )
            config = it.trl_config(
                work / "smol-lora",
                seed=ctx.seed,
                device=ctx.device,
                learning_rate=1e-3,
                max_length=max_len,
                max_steps=steps,
                batch_size=batch_size,
            )
            trainer = it.trl_trainer(
                copy.deepcopy(big),
                tok,
                it.prompt_completion(train_rows),
                it.prompt_completion(val_rows),
                args=config,
                peft_config=lora_config,
            )
            run = it.run_trainer(trainer)
            cpu = BOOK_CPU["smollm2_lora_step_s"] if batch_size == 4 else ""
            rep.add(
                "smollm2",
                "INFO",
                f"LoRA via TRL ({label}): s/step, tokens/s",
                f"{run['seconds_per_step']:.3f}, {run['tokens_per_second']:,.0f}",
                cpu,
                f"bf16={config.bf16}, train {run['seconds']:.1f} s, "
                f"trainable {run['trainable']:,}",
            )
            del trainer, run
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    del big


# --- 5. compression -------------------------------------------------------------------


def check_compression(ctx, rep: Report, args, work: Path) -> None:
    import torch
    import transformers

    from book_utils import compression as comp
    from book_utils import instruction_tuning as it
    from book_utils.pretraining import ModelConfig, shakespeare_lm_data
    from book_utils.sft_data import load_or_build_sft_dataset

    model, tokenizer = it.load_or_train_sft_model(
        profile=ctx.profile, device=ctx.device, seed=ctx.seed
    )  # chapter 5.2's model
    cpu_model = copy.deepcopy(model).cpu()
    context = model.config.max_position_embeddings
    plays = shakespeare_lm_data(tokenizer, context + 1, ctx.profile)
    test_blocks = plays["test"]["input_ids"][
        : 16 if args.tiny else 256
    ]  # a CPU tensor, as in the notebook
    sft = load_or_build_sft_dataset(ctx.profile)
    pad = it.SFTCollator(tokenizer.pad_token_id)
    test_sft = pad(list(it.tokenize_records(sft["test"], tokenizer, context)[0]))
    train_sft = pad(list(it.tokenize_records(sft["train"], tokenizer, context)[0]))
    with rep.guard(
        "compression", "evaluate_lm(cuda model, CPU blocks) as chapter 5.2 calls it"
    ):
        gpu = comp.evaluate_lm(model, test_blocks)["loss"]
        cpu = comp.evaluate_lm(cpu_model, test_blocks)["loss"]
        rep.add(
            "compression",
            "PASS" if abs(gpu - cpu) < 1e-3 else "FAIL",
            "evaluate_lm, play blocks (loss; CPU column: same model on CPU)",
            gpu,
            cpu,
        )
    with rep.guard("compression", "evaluate_lm with labels (SFT answers)"):
        gpu = comp.evaluate_lm(model, test_sft["input_ids"], test_sft["labels"])["loss"]
        cpu = comp.evaluate_lm(cpu_model, test_sft["input_ids"], test_sft["labels"])[
            "loss"
        ]
        rep.add(
            "compression",
            "PASS" if abs(gpu - cpu) < 1e-3 else "FAIL",
            "evaluate_lm with labels, SFT test answers (loss)",
            gpu,
            cpu,
        )
    with rep.guard("compression", "fp32 / bf16 / fp16 on cuda"):
        x = test_blocks[:8, :-1].to(ctx.device)
        for name, m in {
            "fp32": model,
            "bf16": comp.cast(model, torch.bfloat16),
            "fp16": comp.cast(model, torch.float16),
        }.items():
            with torch.inference_mode():
                seconds = comp.median_latency(lambda: m(input_ids=x, use_cache=False))
                loss = comp.evaluate_lm(m, test_blocks)["loss"]
            rep.add(
                "compression",
                "INFO",
                f"{name}: ms per forward (8x{context}), play loss",
                f"{1000 * seconds:.2f}, {loss:.3f}",
            )
    with rep.guard("compression", "quantize_int8 of a cuda model"):
        q8 = comp.quantize_int8(model)
        rep.add(
            "compression",
            "PASS",
            "quantize_int8 of a cuda model (runs on CPU): play loss",
            comp.evaluate_lm(q8, test_blocks)["loss"],
        )
    with rep.guard("compression", "magnitude_prune on cuda"):
        pruned = comp.magnitude_prune(model, 0.5)
        rep.add(
            "compression",
            "PASS",
            "magnitude_prune(0.5) on cuda: sparsity, play loss",
            f"{comp.weight_sparsity(pruned):.3f}, "
            f"{comp.evaluate_lm(pruned, test_blocks)['loss']:.3f}",
        )
    student_cfg = ModelConfig(
        vocab_size=len(tokenizer), n_layer=2, n_head=2, n_embd=64, block_size=context
    )

    def new_student():
        torch.manual_seed(ctx.seed)
        return transformers.LlamaForCausalLM(
            student_cfg.to_llama(
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
            )
        )

    steps = args.tiny_steps if args.tiny else 400
    with rep.guard(
        "compression",
        "train_lm as chapter 5.2 calls it (students on CPU, teacher on cuda)",
    ):
        comp.train_lm(
            new_student(),
            train_sft["input_ids"],
            labels=train_sft["labels"],
            steps=2,
            teacher=model,
            seed=ctx.seed,
            progress=False,
        )
        rep.add(
            "compression",
            "PASS",
            "train_lm as chapter 5.2 calls it (students on CPU, teacher on cuda)",
            "ran",
        )
    with rep.guard("compression", "distillation with the students on the device"):
        students = {
            "hard labels": new_student().to(ctx.device),
            "distilled": new_student().to(ctx.device),
        }
        kw = dict(
            labels=train_sft["labels"], steps=steps, seed=ctx.seed, progress=False
        )
        _, s_hard = timed(
            lambda: comp.train_lm(students["hard labels"], train_sft["input_ids"], **kw)
        )
        # runs before the del at the end: F821 is a ruff false positive (ruff#22452)
        _, s_dist = timed(
            lambda: comp.train_lm(
                students["distilled"],
                train_sft["input_ids"],
                teacher=model,  # noqa: F821
                **kw,
            )
        )
        rep.add(
            "compression",
            "INFO",
            f"two {steps}-step student runs on the device, s",
            f"{s_hard + s_dist:.1f}",
            "",
            f"hard {s_hard:.1f} s, distilled {s_dist:.1f} s "
            "(CPU: 83 s for both in chapter 5.2)",
        )
        losses = {
            k: comp.evaluate_lm(m, test_sft["input_ids"], test_sft["labels"])["loss"]
            for k, m in students.items()
        }
        rep.add(
            "compression",
            "INFO",
            "students' SFT answer loss: hard / distilled",
            f"{losses['hard labels']:.3f} / {losses['distilled']:.3f}",
        )
    with rep.guard("compression", "export_onnx of a cuda model"):
        path = comp.export_onnx(model, work / "model.onnx")
        session = comp.onnx_session(path)
        x = test_blocks[:2, :32]
        with torch.inference_mode():
            ref = model(input_ids=x.to(ctx.device), use_cache=False).logits.cpu()
        diff = (comp.onnx_logits(session, x) - ref).abs().max().item()
        rep.add(
            "compression",
            "PASS" if diff < 1e-3 else "FAIL",
            "export_onnx + onnxruntime vs cuda logits (max |diff|)",
            f"{diff:.1e}",
        )
    del model


# --- 6. serving -----------------------------------------------------------------------


def check_serving(ctx, rep: Report, args, work: Path) -> None:
    import urllib.request

    from book_utils import instruction_tuning as it
    from book_utils import serving
    from book_utils.pretraining import shakespeare_lm_data

    model, tokenizer = it.load_or_train_sft_model(
        profile=ctx.profile, device=ctx.device, seed=ctx.seed
    )  # chapter 5.2's model
    context = model.config.max_position_embeddings
    app = serving.create_app(
        model, tokenizer, max_prompt_tokens=context // 2, timeout_s=30.0
    )
    data = shakespeare_lm_data(tokenizer, context + 1, ctx.profile)
    test_blocks = data["test"]["input_ids"][:32]
    n_requests, new_tokens = (4, 8) if args.tiny else (24, 32)
    payloads = [
        {
            "prompt": tokenizer.decode(test_blocks[i, :24]),
            "max_new_tokens": new_tokens,
            "do_sample": True,
            "top_p": 0.9,
            "seed": i,
        }
        for i in range(n_requests)
    ]
    with serving.BackgroundServer(app) as server:
        status, body = serving.post_json(
            server.url + "/generate",
            {
                "prompt": "\n\nHAMLET.\n",
                "max_new_tokens": 16,
                "do_sample": True,
                "top_p": 0.9,
            },
        )
        rep.add(
            "serving",
            "PASS" if status == 200 else "FAIL",
            "POST /generate on a cuda model",
            status,
            "200",
            repr(body.get("text", body.get("detail", "")))[:60],
        )
        again = serving.post_json(
            server.url + "/generate",
            {
                "prompt": "\n\nHAMLET.\n",
                "max_new_tokens": 16,
                "do_sample": True,
                "top_p": 0.9,
            },
        )
        same = again[0] == status and again[1].get("text") == body.get("text")
        rep.add(
            "serving",
            "PASS" if same else "FAIL",
            "same seed, same answer (CUDA sampling)",
            str(same),
        )
        chat = serving.post_json(
            server.url + "/generate",
            {"prompt": "Who wrote Hamlet?", "chat": True, "max_new_tokens": 24},
        )
        rep.add(
            "serving",
            "PASS" if chat[0] == 200 else "FAIL",
            "chat request (template, stops at <|im_end|>)",
            chat[0],
            "",
            (
                f"{chat[1].get('new_tokens')} tokens: "
                f"{chat[1].get('text', chat[1].get('detail', ''))!r}"
            )[:80],
        )
        bad = serving.post_json(
            server.url + "/generate", {"prompt": "To be", "temperature": 5}
        )
        rep.add(
            "serving",
            "PASS" if bad[0] == 422 else "FAIL",
            "invalid request answered 422",
            bad[0],
        )
        for c in (1, 2) if args.tiny else (1, 2, 4, 8):
            r = serving.load_test(server.url + "/generate", payloads, c)
            rep.add(
                "serving",
                "PASS" if r["errors"] == 0 else "FAIL",
                f"load test, concurrency {c}: p50/p95 ms, tokens/s",
                f"{1000 * r['p50_s']:.0f}/{1000 * r['p95_s']:.0f}, "
                f"{r['tokens_per_s']:,.0f}",
                "",
                f"{r['ok']}/{r['requests']} ok",
            )
        health = json.loads(
            urllib.request.urlopen(server.url + "/health", timeout=10).read()
        )
    rep.add(
        "serving",
        "PASS" if not server.thread.is_alive() else "FAIL",
        "server stopped, port released",
        str(health.get("status")),
    )
    del model


# --- 7. the throughput benchmark ------------------------------------------------------


def check_benchmark(ctx, rep: Report, args, work: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark_pretraining.py"),
        "--device",
        ctx.device.type,
        "--steps",
        "3" if args.tiny else "20",
    ] + (["--no-compile"] if args.tiny else [])
    began = time.perf_counter()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=args.benchmark_timeout,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - began
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    rep.data["benchmark_stdout"] = done.stdout
    rep.data["benchmark_stderr_tail"] = done.stderr[-3000:]
    if done.returncode:
        rep.add(
            "benchmark",
            "FAIL",
            "scripts/benchmark_pretraining.py",
            f"exit {done.returncode}",
            "",
            done.stderr.strip().splitlines()[-1][:150] if done.stderr.strip() else "",
        )
        return
    for line in lines:
        if (
            line.startswith(("peak", "torch.compile speed-up"))
            or "ms/step" in line
            or "failed" in line
        ):
            rep.add(
                "benchmark",
                "INFO",
                line.split(":")[0].strip(),
                ":".join(line.split(":")[1:]).strip()[:120],
            )
    rep.add("benchmark", "INFO", "benchmark wall s (incl. compile)", seconds)


# --- main -----------------------------------------------------------------------------


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", choices=CHECKS, help="run only these checks (default: all)"
    )
    parser.add_argument(
        "--skip", nargs="+", choices=CHECKS, default=[], help="skip these checks"
    )
    parser.add_argument(
        "--profile",
        default="full",
        choices=("ci", "full"),
        help="the book profile (default: full)",
    )
    parser.add_argument(
        "--out", type=Path, help="also write table.txt and results.json here"
    )
    parser.add_argument(
        "--smollm2-shape",
        help="folder with SmolLM2's config.json and tokenizer (default: the cache's)",
    )
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run even without CUDA (a syntax test; use --tiny)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few steps of every run (a syntax test, numbers mean nothing)",
    )
    parser.add_argument(
        "--tiny-steps",
        type=int,
        default=4,
        help="steps of each training run with --tiny",
    )
    parser.add_argument(
        "--benchmark-timeout",
        type=int,
        default=300,
        help="seconds for benchmark_pretraining.py",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    os.environ["BOOK_PROFILE"] = args.profile
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "check_gpu_path: torch sees no CUDA GPU, so there is no GPU path to check "
            "here. Run it on a machine with a GPU, or pass --allow-cpu --tiny for a "
            "quick syntax test of the script on this CPU."
        )
        return 0
    import datasets
    import transformers

    import book_utils
    from book_utils.cache import cache_root

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    ctx = book_utils.setup(seed=0)
    work = cache_root() / ctx.profile / "gpu-check"
    work.mkdir(parents=True, exist_ok=True)
    device = (
        torch.cuda.get_device_name(0) if ctx.device.type == "cuda" else ctx.device.type
    )
    rep = Report(
        [work] + ([args.out] if args.out else []), f"{device}; {ctx.summary()}"
    )
    import hashlib

    rep.data["book_utils_sha1"] = {
        f.name: hashlib.sha1(f.read_bytes()).hexdigest()[:12]
        for f in sorted((ROOT / "book_utils").glob("*.py"))
    }
    print(f"device: {device}; results in {work}", flush=True)
    selected = [c for c in (args.only or CHECKS) if c not in args.skip]
    functions = {
        "pretrain": check_pretrain,
        "sft": check_sft,
        "decoding": check_decoding,
        "smollm2": check_smollm2,
        "compression": check_compression,
        "serving": check_serving,
        "benchmark": check_benchmark,
    }
    started = time.perf_counter()
    for name in selected:
        began = time.perf_counter()
        print(f"--- {name}", flush=True)
        with rep.guard(name, "check crashed"):
            functions[name](ctx, rep, args, work)
        rep.data.setdefault("check_seconds", {})[name] = round(
            time.perf_counter() - began, 1
        )
        print(f"--- {name}: {time.perf_counter() - began:.0f} s", flush=True)
        rep.save()
    rep.data["total_seconds"] = round(time.perf_counter() - started, 1)
    rep.save()
    print("\n" + rep.table())
    print(
        f"\ncheck times (s): {rep.data['check_seconds']}; "
        f"total {rep.data['total_seconds']} s"
    )
    for key, text in rep.errors.items():
        print(f"\n=== traceback: {key}\n{text}")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
