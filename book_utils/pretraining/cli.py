"""The command line, ``python -m book_utils.pretraining --help`` (:func:`main`), which
runs unchanged under ``torchrun --nproc_per_node 2 -m book_utils.pretraining`` and
``accelerate launch`` (gloo on CPU, nccl on GPUs), and :func:`run_cli`, which launches
it on 1 or more processes and returns its result.

Chapter 3.2, book/03_pretraining/02_causal_lm.ipynb (it trains the base model this way
and compares a 1-process with a 2-process run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from book_utils.checks import positive_int
from book_utils.pretraining.config import PRESETS, preset
from book_utils.pretraining.data import shakespeare_lm_data
from book_utils.pretraining.train import SAMPLE_PROMPT, build_model, train


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m book_utils.pretraining",
        description="Pretrain the book's small Llama-style causal LM on the "
        "Shakespeare train split (chapter 3). Runs unchanged on several processes: "
        "torchrun --nproc_per_node 2 -m book_utils.pretraining ... "
        "(or accelerate launch --multi_gpu --num_processes 2 -m "
        "book_utils.pretraining ..., which hands over to the same launcher, also on "
        "CPUs).",
    )
    parser.add_argument(
        "--preset",
        default="base",
        choices=sorted(PRESETS),
        help="model and training sizes (default: base)",
    )
    parser.add_argument(
        "--profile",
        choices=("ci", "full"),
        default=None,
        help="sizes of this profile (default: $BOOK_PROFILE or full)",
    )
    parser.add_argument(
        "--max-steps", type=int, help="override the preset's number of optimizer steps"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="override the global batch size in blocks (split over processes)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        help="override how often (in steps) validation loss is measured",
    )
    parser.add_argument("--lr", type=float, help="override the peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="resumable checkpoints go here (default: none)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write the run's history and final validation loss here as JSON",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no log lines (evaluations, final summary)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """The script entry point: ``python -m book_utils.pretraining --help``. Chapter 3
    runs it on 1 and 2 processes.

    When ``WORLD_SIZE`` > 1 (set by ``torchrun`` and ``accelerate launch``), it joins
    the process group (nccl on GPUs, gloo on CPUs), pins one GPU per process
    (``LOCAL_RANK``) or splits the CPU cores, and
    :func:`~book_utils.pretraining.train.train` shards every global batch over the
    processes.
    """
    args = _parse(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    use_cuda = device_name.startswith("cuda")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world > 1:
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(device)
        else:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    rank = torch.distributed.get_rank() if world > 1 else 0
    try:
        from book_utils.environment import pick_dtype, read_profile, seed_everything
        from book_utils.tokenization import load_or_train_tokenizer

        profile = args.profile or read_profile()
        seed_everything(args.seed)
        # rank 0 trains and caches the tokenizer if needed; the others then read it
        if rank == 0:
            tokenizer = load_or_train_tokenizer(profile)
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            tokenizer = load_or_train_tokenizer(profile)
        overrides = {
            k: v
            for k, v in (
                ("max_steps", args.max_steps),
                ("batch_size", args.batch_size),
                ("eval_every", args.eval_every),
                ("lr", args.lr),
            )
            if v is not None
        }
        model_cfg, train_cfg = preset(
            args.preset, profile, len(tokenizer), seed=args.seed, **overrides
        )
        data = shakespeare_lm_data(tokenizer, model_cfg.block_size, profile)
        model = build_model(model_cfg, tokenizer, seed=args.seed).to(device)
        began = time.perf_counter()
        history = train(
            model,
            data,
            train_cfg,
            checkpoint_dir=args.checkpoint_dir,
            progress=not args.no_progress,
            tokenizer=tokenizer,
            sample_prompt=SAMPLE_PROMPT,
            dtype=pick_dtype(device),
            log=print if rank == 0 and not args.quiet else None,
        )
        result = {
            "preset": args.preset,
            "profile": profile,
            "world_size": world,
            "wall_seconds": time.perf_counter() - began,
            "model_config": asdict(model_cfg),
            "train_config": asdict(train_cfg),
            "history": history,
        }
        if rank == 0 and args.out is not None:
            from book_utils.cache import atomic_write_text

            atomic_write_text(args.out, json.dumps(result))
        if rank == 0 and not args.quiet:
            print(
                f"done: {train_cfg.max_steps} steps on {world} process(es), "
                f"final val loss {history['val_loss'][-1]:.4f}"
            )
        return result
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def run_cli(
    args: list[str],
    nproc: int = 1,
    out: Path | str | None = None,
    echo: bool = False,
) -> dict:
    """Run this command line on ``nproc`` processes (``torchrun`` when ``nproc`` > 1),
    each with ``cpu_count // nproc`` threads, and return the JSON result it writes (with
    ``command`` and ``stdout`` added); ``echo`` prints rank 0's log lines as they come.
    Chapter 3 trains the base model this way and compares a 1-process with a 2-process
    run. Raises ``RuntimeError`` with the end of stderr on failure."""
    import tempfile

    positive_int("nproc", nproc)
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="pretraining-run-")) / "result.json"
    out = Path(out)
    launcher = [sys.executable]
    if nproc > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
        ]
    module = ["-m", "book_utils.pretraining"]
    command = [*launcher, *module, *args, "--no-progress", "--out", str(out)]
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads)}
    lines = []
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
        for line in process.stdout:
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
        code = process.wait()
        stderr.seek(0)
        errors = stderr.read()
    if code != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed with exit code {code}:\n{errors[-3000:]}"
        )
    result = json.loads(out.read_text())
    shown = f"torchrun --nproc_per_node {nproc}" if nproc > 1 else "python"
    result["command"] = " ".join([shown, *module, *args])
    result["stdout"] = "".join(lines)
    return result
