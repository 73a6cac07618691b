"""Chapter 5's deployment figures: KV cache, int8 size/speed, ONNX vs torch, serving.

    # SmolLM2 for the cache and int8, our model for the rest:
    python scripts/benchmark_deployment.py
    # no SmolLM2 (faster; context 128):
    python scripts/benchmark_deployment.py --big ours --new-tokens 100
    # only ONNX and serving:
    python scripts/benchmark_deployment.py --skip kv int8

It prints the figures chapter 5 quotes: the speedup of generating ``--new-tokens``
greedy tokens with the KV cache over recomputing the prefix; the saved-size and
forward-latency ratios of dynamic int8 over fp32; the onnxruntime/torch latency ratio of
our model's logits (with the max logit difference); and the p50/p95 latency and
throughput of the HTTP service under a bounded concurrent load of chat requests. "Our
model" is the book's instruction-tuned model of chapter 4c (trained first if the cache
lacks it). It is not a test: timings depend on the machine and its load (the book's
figures come from a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from book_utils import compression as comp
from book_utils import decoding as dec
from book_utils import serving

PARTS = ("kv", "int8", "onnx", "serving")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        default="full",
        choices=("ci", "full"),
        help="which cached SFT model",
    )
    parser.add_argument(
        "--big",
        default="smollm2",
        choices=("smollm2", "ours"),
        help="model for the KV-cache and int8 figures",
    )
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=256,
        help="tokens generated for the KV-cache speedup",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=24,
        help="requests per concurrency level in the load test",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    os.environ["BOOK_PROFILE"] = args.profile
    if args.threads:
        torch.set_num_threads(args.threads)
    import book_utils
    from book_utils.instruction_tuning import load_or_train_sft_model

    ctx = book_utils.setup(seed=0, verbose=False)
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    model, tokenizer = load_or_train_sft_model(
        profile=ctx.profile, device=ctx.device, seed=ctx.seed
    )
    model = model.cpu()
    figures = {}
    if args.big == "smollm2" and ({"kv", "int8"} - set(args.skip)):
        from book_utils.assets import load_smollm2

        big_tok, big = load_smollm2()
    else:
        big_tok, big = tokenizer, model
    request = (
        "Continue this passage from Hamlet:\n\n"
        "To be, or not to be, that is the question:\n"
        "Whether 'tis nobler in the mind to suffer"
    )
    chat = [{"role": "user", "content": request}]
    text = (
        big_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        + "The quick brown fox. " * 40
    )
    with torch.inference_mode():
        if "kv" not in args.skip:
            # 16 tokens of a chat prompt
            prompt = torch.tensor(
                [big_tok(text, add_special_tokens=False)["input_ids"][:16]]
            )
            limit = big.config.max_position_embeddings - 16
            new = min(args.new_tokens, limit)
            with_cache = dec.time_generation(big, prompt, new, use_cache=True)
            without = dec.time_generation(big, prompt, new, use_cache=False)
            figures["kv_speedup"] = without / with_cache
            print(
                f"KV cache ({type(big).__name__}, {new} new tokens): "
                f"{with_cache:.2f} s with, {without:.2f} s "
                f"without -> speedup {figures['kv_speedup']:.1f}x"
            )
        if "int8" not in args.skip:
            q = comp.quantize_int8(big)
            x = torch.tensor(
                [
                    big_tok(text, add_special_tokens=False)["input_ids"][
                        : min(128, big.config.max_position_embeddings)
                    ]
                ]
            )
            size = comp.state_dict_bytes(big) / comp.state_dict_bytes(q)
            fp32_s = comp.median_latency(lambda: big(input_ids=x, use_cache=False), 5)
            int8_s = comp.median_latency(lambda: q(input_ids=x, use_cache=False), 5)
            figures.update(int8_size_ratio=size, int8_speedup=fp32_s / int8_s)
            print(
                f"int8 dynamic: {size:.2f}x smaller on disk, "
                f"forward 1x{x.shape[1]}: {1000 * fp32_s:.1f} ms fp32, "
                f"{1000 * int8_s:.1f} ms int8 -> {fp32_s / int8_s:.2f}x"
            )
        if "onnx" not in args.skip:
            with tempfile.TemporaryDirectory() as tmp:
                session = comp.onnx_session(
                    comp.export_onnx(model, Path(tmp) / "model.onnx")
                )
                for shape in ((1, 32), (8, model.config.max_position_embeddings)):
                    x = torch.randint(
                        0,
                        model.config.vocab_size,
                        shape,
                        generator=torch.Generator().manual_seed(0),
                    )
                    diff = (
                        (
                            comp.onnx_logits(session, x)
                            - model(input_ids=x, use_cache=False).logits
                        )
                        .abs()
                        .max()
                        .item()
                    )
                    t_torch = comp.median_latency(
                        lambda: model(input_ids=x, use_cache=False), 10
                    )
                    t_ort = comp.median_latency(
                        lambda: comp.onnx_logits(session, x), 10
                    )
                    figures[f"onnx_ratio_{shape[0]}x{shape[1]}"] = t_ort / t_torch
                    print(
                        f"ONNX {shape[0]}x{shape[1]}: torch {1000 * t_torch:.2f} ms, "
                        f"onnxruntime {1000 * t_ort:.2f} ms "
                        f"(ratio {t_ort / t_torch:.2f}), max |logit diff| {diff:.1e}"
                    )
    if "serving" not in args.skip:
        app = serving.create_app(
            model,
            tokenizer,
            max_prompt_tokens=model.config.max_position_embeddings // 2,
        )
        payloads = [
            {
                "prompt": request,
                "chat": True,
                "max_new_tokens": 32,
                "do_sample": True,
                "top_p": 0.9,
                "seed": i,
            }
            for i in range(args.requests)
        ]
        with serving.BackgroundServer(app) as server:
            for c in args.concurrency:
                r = serving.load_test(server.url + "/generate", payloads, c)
                figures[f"serving_c{c}"] = r
                print(
                    f"serving, concurrency {c}: {r['ok']}/{r['requests']} ok, "
                    f"p50 {1000 * r['p50_s']:.0f} ms, "
                    f"p95 {1000 * r['p95_s']:.0f} ms, "
                    f"{r['requests_per_s']:.1f} requests/s, "
                    f"{r['tokens_per_s']:.0f} tokens/s"
                )
    return figures


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
