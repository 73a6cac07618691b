"""Chapter 3's pretraining step: tokens/s, FLOP/s and MFU, eager vs torch.compile.

    # the full-profile base model, CPU or GPU:
    python scripts/benchmark_pretraining.py
    python scripts/benchmark_pretraining.py --preset nanogpt-char --steps 30
    python scripts/benchmark_pretraining.py --no-compile        # eager only

It times whole optimizer steps (forward, backward, gradient clipping, AdamW) of the
book's Llama-style model on random token blocks, counts the model's FLOPs with the 6·N
rule plus the causal attention term (``ModelConfig.train_flops_per_token``), and divides
the achieved FLOP/s by this machine's measured peak on large matrix products: the model
FLOP utilisation (MFU). ``torch.compile`` is tried too; a failure is reported, not
raised. It prints figures; it is not a test (timings depend on the machine and its
load).
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from book_utils import pretraining as pt


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", choices=sorted(pt.PRESETS))
    parser.add_argument("--profile", default="full", choices=("ci", "full"))
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="the book's tokenizer has 4096 (full) entries",
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="timed optimizer steps per mode"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps first (for compile: includes compiling)",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile measurement"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = (
        torch.bfloat16
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else torch.float32
    )
    model_cfg, train_cfg = pt.preset(args.preset, args.profile, args.vocab_size)
    tokens_per_step = train_cfg.batch_size * model_cfg.block_size
    flops_per_token = model_cfg.train_flops_per_token()
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )
    print(
        f"model: preset {args.preset!r} ({args.profile}), "
        f"{model_cfg.n_params():,} parameters, "
        f"{model_cfg.matmul_params():,} in matmuls; "
        f"batch {train_cfg.batch_size} x {model_cfg.block_size} = "
        f"{tokens_per_step:,} tokens/step"
    )
    print(
        f"FLOPs per token: 6N = {6 * model_cfg.matmul_params() / 1e6:.1f} M, "
        f"+ attention = {flops_per_token / 1e6:.1f} M"
    )
    peak = pt.measure_matmul_flops(
        device, dtype, n=2048 if device.type == "cuda" else 1024, seconds=2.0
    )
    print(
        f"peak: {peak / 1e9:,.1f} GFLOP/s on {dtype} matrix products "
        "(the MFU denominator)"
    )

    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(
        0,
        args.vocab_size,
        (train_cfg.batch_size, model_cfg.block_size),
        generator=generator,
    ).to(device)
    modes = ["eager"] + ([] if args.no_compile else ["torch.compile"])
    rows = []
    for mode in modes:
        model = pt.build_model(model_cfg, seed=0).to(device)
        if mode == "torch.compile":
            try:
                model = torch.compile(model)
                seconds, warm = pt.time_train_steps(
                    model, batch, train_cfg, args.steps, args.warmup, dtype
                )
            except Exception as error:  # noqa: BLE001
                # report any compiler failure and go on
                print(
                    f"{mode}: failed "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                )
                continue
        else:
            seconds, warm = pt.time_train_steps(
                model, batch, train_cfg, args.steps, args.warmup, dtype
            )
        tokens = tokens_per_step / seconds
        achieved = tokens * flops_per_token
        rows.append((mode, tokens, achieved))
        print(
            f"{mode:>14}: {seconds * 1e3:8.1f} ms/step | {tokens:10,.0f} tokens/s | "
            f"{achieved / 1e9:8.2f} GFLOP/s | "
            f"MFU {achieved / peak:6.1%} | "
            f"warm-up {args.warmup} steps took {warm:.1f} s"
        )
    if len(rows) == 2:
        print(f"torch.compile speed-up: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
