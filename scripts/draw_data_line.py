"""Draw the landing page's figure, the book's data line, as an SVG: one box per source
or chapter, one arrow per hand-over. Run `python scripts/draw_data_line.py` after
changing a box; it rewrites book/figures/data_line.svg."""

from pathlib import Path

W, H = 205, 46
COL = [10, 260, 510, 760]
FILL = {
    "src": "#eef1f5",
    "found": "#dbeafe",
    "pre": "#dcfce7",
    "sft": "#fef3c7",
    "dep": "#fce7f3",
}
boxes = {
    # name: (col, y, part, title, subtitle)
    "shakespeare": (0, 45, "src", "Shakespeare", "42 plays and poems"),
    "reviews": (0, 175, "src", "Clothing reviews", "23,486 reviews"),
    "dialogues": (
        0,
        245,
        "src",
        "Dialogues and prompts",
        "ChatterBot, chit-chat, IFBench",
    ),
    "pretrained": (0, 330, "src", "Pretrained models", "MiniLM, SmolLM2-135M"),
    "ngram": (1, 10, "found", "1 · n-gram model", "the bits per character to beat"),
    "tokenizer": (1, 80, "pre", "3.1 · BPE tokenizer", "4,096 tokens, ChatML template"),
    "sftdata": (1, 200, "sft", "4b · SFT dataset", "7 tasks, leak-free splits"),
    "classifier": (
        1,
        330,
        "sft",
        "4a · MiniLM classifier",
        "sentiment, then names (NER)",
    ),
    "attention": (
        2,
        10,
        "found",
        "2 · attention, Transformer",
        "each piece checked on PyTorch",
    ),
    "base": (2, 80, "pre", "3.2 · base model", "our small Llama, pretrained"),
    "sft": (2, 200, "sft", "4c · instruction-tuned", "prompt-masked SFT, ablations"),
    "smollm2": (2, 330, "sft", "4c.3 · SmolLM2 + LoRA", "full fine-tuning vs LoRA"),
    "mlm": (3, 80, "pre", "3.3 · masked LM", "BERT-style, same tokenizer"),
    "deploy": (
        3,
        200,
        "dep",
        "5 · decoding and serving",
        "KV cache, int8, an HTTP API",
    ),
    "evaluation": (
        3,
        330,
        "sft",
        "4c.4 · evaluation",
        "log-likelihood, judges, intervals",
    ),
}


def edge(name, side, dy=0):
    col, y, *_ = boxes[name]
    x = COL[col]
    return {
        "r": (x + W, y + H / 2 + dy),
        "l": (x, y + H / 2 + dy),
        "t": (x + W / 2, y),
        "b": (x + W / 2, y + H),
    }[side]


arrows = [  # (from, side, to, side, via points)
    ("shakespeare", "r", "ngram", "l", []),
    ("shakespeare", "r", "tokenizer", "l", []),
    ("shakespeare", "r", "sftdata", "l", []),
    ("reviews", "r", "sftdata", "l", []),
    ("dialogues", "r", "sftdata", "l", []),
    ("reviews", "r", "classifier", "l", []),
    ("pretrained", "r", "classifier", "l", []),
    ("pretrained", "b", "smollm2", "b", [(112, 392), (612, 392)]),
    ("tokenizer", "r", "base", "l", []),
    ("attention", "b", "base", "t", []),
    ("tokenizer", "r", "mlm", "l", [(485, 103), (485, 160), (740, 160), (740, 103)]),
    ("base", "b", "sft", "t", []),
    ("sftdata", "r", "sft", "l", []),
    ("sftdata", "r", "smollm2", "l", []),
    ("sft", "r", "deploy", "l", []),
    ("sft", "r", "evaluation", "l", []),
    ("smollm2", "r", "evaluation", "l", []),
]

out = [
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 975 400" width="975" '
    'height="400" role="img" aria-labelledby="title desc" '
    'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
    '<title id="title">One line of data through the book</title>',
    '<desc id="desc">Shakespeare trains the n-gram baseline, the tokenizer and the '
    "base model; reviews, plays and dialogues become the SFT dataset that "
    "instruction-tunes it; the tuned model is evaluated, compressed and served.</desc>",
    '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
    'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
    'fill="#5b6472"/></marker></defs>',
]
for a, sa, b, sb, via in arrows:
    pts = [edge(a, sa), *via, edge(b, sb)]
    d = " ".join(f"{x:.0f},{y:.0f}" for x, y in pts)
    out.append(
        f'<polyline points="{d}" fill="none" stroke="#5b6472" stroke-width="1.4" '
        'marker-end="url(#arrow)"/>'
    )
for name, (col, y, part, title, sub) in boxes.items():
    x = COL[col]
    stroke = "#9aa3ae" if part == "src" else "#4b5563"
    out.append(
        f'<g id="{name}"><rect x="{x}" y="{y}" width="{W}" height="{H}" rx="7" '
        f'fill="{FILL[part]}" stroke="{stroke}" stroke-width="1.2"/>'
        f'<text x="{x + W / 2:.0f}" y="{y + 19}" text-anchor="middle" font-size="13.5" '
        f'font-weight="bold" fill="#111827">{title}</text>'
        f'<text x="{x + W / 2:.0f}" y="{y + 36}" text-anchor="middle" font-size="11.5" '
        f'fill="#374151">{sub}</text></g>'
    )
out.append("</svg>")
open(
    Path(__file__).resolve().parents[1] / "book" / "figures" / "data_line.svg", "w"
).write("\n".join(out) + "\n")
