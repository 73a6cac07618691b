"""Every size that differs between the ``ci`` and ``full`` profiles in the package,
in one table (nanoGPT's ``config/`` files, as data). ``ci`` runs the same code path
tiny and fast; ``full`` gives the committed outputs. A notebook's own knobs stay on its
page (``ctx.pick(ci=..., full=...)``); what the package decides lives here.

Read a row with :func:`for_profile`, e.g. ``for_profile(VOCAB_SIZE, "ci") == 512``.
"""

from __future__ import annotations

PROFILES = ("ci", "full")


def for_profile(table: dict, profile: str):
    """``table[profile]``, with an error naming the profiles when ``profile`` is not
    one of them."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return table[profile]


# --- chapter 3.1: the tokenizer ------------------------------------------------------

#: Vocabulary of the book's BPE tokenizer (chapter 3.1 measures why 4096 suits a small
#: CPU model).
VOCAB_SIZE = {"ci": 512, "full": 4096}
#: Characters of each Shakespeare training work the tokenizer learns from (None: all).
TOKENIZER_CHARS = {"ci": 10_000, "full": None}

# --- chapter 3.2: pretraining ---------------------------------------------------------

#: Characters of each (training, held-out) play that pretraining reads (None: all).
PRETRAINING_CHARS = {"ci": (20_000, 10_000), "full": (None, None)}

#: The sizes the book pretrains, per preset and profile. ``base``: the book's base model
#: (its vocabulary comes from the tokenizer); ``nanogpt-char``: nanoGPT's CPU "baby
#: GPT" setting on characters (full = the published setting); ``tiny``: a quick run to
#: try the command line and its launchers.
PRESETS: dict[str, dict[str, dict]] = {
    "base": {
        "ci": {
            "model": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
            "train": dict(
                max_steps=40,
                batch_size=8,
                lr=2e-3,
                min_lr=2e-4,
                warmup_steps=5,
                eval_every=20,
                eval_blocks=8,
                checkpoint_every=20,
            ),
        },
        "full": {
            "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
            "train": dict(
                max_steps=1000,
                batch_size=16,
                lr=3e-3,
                min_lr=3e-4,
                warmup_steps=100,
                eval_every=125,
                eval_blocks=64,
                checkpoint_every=125,
            ),
        },
    },
    "nanogpt-char": {
        "ci": {
            "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
            "train": dict(
                max_steps=40,
                batch_size=12,
                lr=1e-3,
                min_lr=1e-4,
                warmup_steps=10,
                beta2=0.99,
                eval_every=20,
                eval_blocks=16,
                checkpoint_every=40,
            ),
        },
        "full": {
            "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
            "train": dict(
                max_steps=2000,
                batch_size=12,
                lr=1e-3,
                min_lr=1e-4,
                warmup_steps=100,
                beta2=0.99,
                eval_every=250,
                eval_blocks=240,
                checkpoint_every=500,
            ),
        },
    },
    "tiny": {
        "ci": {
            "model": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
            "train": dict(
                max_steps=10,
                batch_size=8,
                lr=2e-3,
                min_lr=2e-4,
                warmup_steps=2,
                eval_every=5,
                eval_blocks=8,
                checkpoint_every=10,
            ),
        },
        "full": {
            "model": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
            "train": dict(
                max_steps=40,
                batch_size=8,
                lr=2e-3,
                min_lr=2e-4,
                warmup_steps=5,
                eval_every=10,
                eval_blocks=16,
                checkpoint_every=40,
            ),
        },
    },
}

# --- chapter 4b: the SFT dataset ------------------------------------------------------

#: Records per task and split, (train, validation, test). Closed tasks are balanced
#: over their answers; a source item is used at most once per task.
SFT_RECORDS = {
    "full": {
        "sentiment": (900, 150, 150),
        "rating": (900, 150, 150),
        "recommend": (900, 150, 150),
        "play": (1200, 160, 160),
        "continue": (600, 60, 60),
        "chat": (1200, 80, 80),
        "ifbench": (200, 40, 40),
    },
    "ci": {
        "sentiment": (40, 16, 16),
        "rating": (40, 20, 20),
        "recommend": (40, 16, 16),
        "play": (48, 16, 16),
        "continue": (24, 8, 8),
        "chat": (40, 8, 8),
        "ifbench": (16, 4, 4),
    },
}
#: Chit-chat conversations read from the corpus (None: all of them).
CHITCHAT_LIMIT = {"ci": 1500, "full": None}

# --- chapter 4c: mid-training and instruction tuning ----------------------------------

#: Documents per source and split that mid-training reads (None: all).
MIDTRAINING_DOCS = {"ci": 300, "full": None}
#: Mid-training's ``pretraining.TrainConfig`` fields (a short run at a third of
#: pretraining's peak learning rate).
MIDTRAINING = {
    "ci": dict(
        max_steps=20,
        batch_size=8,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=2,
        eval_every=10,
        eval_blocks=64,
        checkpoint_every=20,
    ),
    "full": dict(
        max_steps=300,
        batch_size=16,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=30,
        eval_every=100,
        eval_blocks=64,
        checkpoint_every=300,
    ),
}
#: The recipe chapter 4c instruction-tunes our base model with: ``finetune``'s
#: arguments (each "which play?" record three times).
SFT_RECIPE = {
    "ci": dict(
        max_steps=20,
        batch_size=8,
        learning_rate=2e-3,
        warmup_steps=0.1,
        group_by_length=True,
        per_example=True,
        repeats={"play": 3},
    ),
    "full": dict(
        max_steps=1600,
        batch_size=16,
        learning_rate=2e-3,
        warmup_steps=0.05,
        group_by_length=True,
        per_example=True,
        repeats={"play": 3},
    ),
}
#: Longest SFT record, in tokens, that the ``ci`` profile's toy base model (64
#: positions) is allowed to read; ``full`` uses the model's own context.
SFT_CONTEXT = {"ci": 256, "full": None}
#: The ``ci`` stand-in for SmolLM2 (a tiny randomly initialised model of the same
#: architecture); ``full`` loads the real weights.
SMOLLM2_CI_CONFIG = dict(
    num_hidden_layers=2,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
