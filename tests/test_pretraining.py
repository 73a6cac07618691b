import json
import math
from types import SimpleNamespace

import pytest
import torch

from book_utils import pretraining as pt
from book_utils.cache import COMPLETE_MARKER

TRAIN_TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n" * 12
)
# Held-out documents use characters that never occur in training, so a leak would be
# visible in the blocks.
HELD_OUT = {
    "validation": {"v1": "XYZ XYZ XYZ\n" * 20},
    "test": {"t1": "QQQ kkk\n" * 20},
}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tokenizer():
    return pt.char_tokenizer(TRAIN_TEXT + "XYZQk")


def splits():
    half = len(TRAIN_TEXT) // 2
    return {"train": {"a": TRAIN_TEXT[:half], "b": TRAIN_TEXT[half:]}, **HELD_OUT}


def tiny(tokenizer, **train):
    model_cfg = pt.ModelConfig(
        vocab_size=len(tokenizer), n_layer=1, n_head=2, n_embd=16, block_size=16
    )
    train_cfg = pt.TrainConfig(
        **{
            **dict(
                max_steps=3,
                batch_size=4,
                lr=1e-2,
                min_lr=1e-3,
                warmup_steps=1,
                eval_every=2,
                eval_blocks=4,
                checkpoint_every=1,
            ),
            **train,
        }
    )
    return model_cfg, train_cfg


# --- configs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        dict(vocab_size=100, n_layer=2, n_head=4, n_embd=64),
        dict(
            vocab_size=100,
            n_layer=1,
            n_head=4,
            n_embd=64,
            n_kv_head=2,
            tie_embeddings=False,
        ),
        dict(vocab_size=37, n_layer=3, n_head=2, n_embd=32, ffn_size=50, block_size=8),
    ],
)
def test_parameter_formula_matches_the_built_model(shape):
    cfg = pt.ModelConfig(**shape)
    assert cfg.n_params() == pt.count_parameters(pt.build_model(cfg))


def test_ffn_default_is_llamas_rounded_8d_over_3():
    assert (
        pt.ModelConfig(vocab_size=10, n_embd=256).ffn == 704
    )  # 682.7 rounded up to a multiple of 32
    assert pt.ModelConfig(vocab_size=10, n_embd=128, n_head=4).ffn == 352


def test_flops_per_token_is_6n_plus_attention():
    cfg = pt.ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=8)
    # matmul weights: per layer 4·32² (attention) + 3·32·96 (SwiGLU), plus the LM head
    # 50·32
    assert cfg.matmul_params() == 2 * (4 * 32 * 32 + 3 * 32 * 96) + 50 * 32
    assert cfg.train_flops_per_token(attention=False) == 6 * cfg.matmul_params()
    assert cfg.train_flops_per_token() == 6 * cfg.matmul_params() + 6 * 2 * 8 * 32


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_embd=30, n_head=4),
        dict(n_layer=0),
        dict(n_kv_head=3),
        dict(vocab_size=True),
    ],
)
def test_bad_model_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        pt.ModelConfig(**{"vocab_size": 10, **bad})


def test_presets_and_overrides():
    model_cfg, train_cfg = pt.preset("base", "ci", 512, max_steps=7, n_layer=3)
    assert (
        model_cfg.vocab_size == 512
        and model_cfg.n_layer == 3
        and train_cfg.max_steps == 7
    )
    with pytest.raises(ValueError, match="unknown config fields"):
        pt.preset("base", "ci", 512, n_layers=3)
    with pytest.raises(ValueError, match="unknown preset"):
        pt.preset("huge", "ci", 512)


# --- schedule -------------------------------------------------------------------------


def test_schedule_warms_up_then_decays_along_a_cosine():
    cfg = pt.TrainConfig(
        max_steps=100, batch_size=1, lr=1e-3, min_lr=1e-4, warmup_steps=10
    )
    lrs = [pt.lr_at(s, cfg) for s in range(120)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # rising during warmup
    assert all(a >= b for a, b in zip(lrs[9:100], lrs[10:101]))  # falling afterwards
    assert lrs[55] == pytest.approx(
        1e-4 + 0.5 * 9e-4
    )  # half way through the cosine: the mean of lr and min_lr
    assert lrs[100] == lrs[119] == pytest.approx(1e-4)


def test_torch_scheduler_follows_lr_at():
    cfg = pt.TrainConfig(
        max_steps=20, batch_size=1, lr=1e-2, min_lr=1e-3, warmup_steps=4
    )
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=cfg.lr)
    scheduler = pt._scheduler(optimizer, cfg)
    for step in range(25):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(pt.lr_at(step, cfg))
        optimizer.step()
        scheduler.step()


# --- data -----------------------------------------------------------------------------


def test_chunking_concatenates_documents_with_eos_and_keeps_splits_apart(tokenizer):
    data = pt.build_lm_datasets(splits(), tokenizer, block_size=16)
    eos = tokenizer.eos_token_id
    train_ids = torch.cat([b for b in data["train"]["input_ids"]]).tolist()
    docs = [
        tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
        for t in (splits()["train"]["a"], splits()["train"]["b"])
    ]
    stream = docs[0] + docs[1]
    assert (
        train_ids == stream[: len(stream) // 16 * 16]
    )  # concatenated in title order, tail dropped
    assert all(len(b) == 16 for split in data.values() for b in split["input_ids"])
    held_out_only = set(tokenizer("XYZQk", add_special_tokens=False)["input_ids"])
    assert not held_out_only & set(
        train_ids
    )  # no validation or test character in any training block
    assert tokenizer.decode(data["validation"]["input_ids"][0]).startswith("XYZ XYZ")


def test_missing_or_empty_corpus_says_what_to_do(tokenizer):
    with pytest.raises(ValueError, match="assets install"):
        pt.build_lm_datasets({}, tokenizer, 8)
    with pytest.raises(ValueError, match="no text"):
        pt.build_lm_datasets({"train": {"a": "  \n"}, **HELD_OUT}, tokenizer, 8)
    with pytest.raises(ValueError, match="more than one split"):
        pt.documents_dataset({"train": {"a": "abc"}, "validation": {"a": "abc"}})


def test_block_longer_than_the_data_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="smaller block_size"):
        pt.build_lm_datasets(splits(), tokenizer, block_size=100_000)


def test_batches_shard_over_processes_and_cover_each_epoch():
    single = [pt.batch_indices(10, 4, step, seed=3) for step in range(2)]
    for step, batch in enumerate(single):
        shards = [
            pt.batch_indices(10, 4, step, seed=3, rank=r, world_size=2)
            for r in range(2)
        ]
        assert sorted(torch.cat(shards).tolist()) == sorted(batch.tolist())
    assert len(set(torch.cat(single).tolist())) == 8  # no block repeats within an epoch
    assert torch.equal(
        pt.batch_indices(10, 4, 5, seed=3), pt.batch_indices(10, 4, 5, seed=3)
    )
    with pytest.raises(ValueError, match="lower batch_size"):
        pt.batch_indices(3, 4, 0, seed=0)
    with pytest.raises(ValueError, match="divisible"):
        pt.batch_indices(10, 3, 0, seed=0, world_size=2)


# --- training and checkpoints ---------------------------------------------------------


def _fit(tokenizer, checkpoint_dir=None, stop_at=None, stop_after=None, **train):
    model_cfg, train_cfg = tiny(tokenizer, **train)
    data = pt.build_lm_datasets(splits(), tokenizer, model_cfg.block_size)

    def interrupt(step, history):
        if step == stop_at:
            raise KeyboardInterrupt

    model = pt.build_model(model_cfg, tokenizer, seed=0)
    history = pt.train(
        model,
        data,
        train_cfg,
        checkpoint_dir=checkpoint_dir,
        progress=False,
        log=None,
        on_step=interrupt,
        stop_after=stop_after,
    )
    return model, history


def test_training_lowers_the_loss(tokenizer):
    _, history = _fit(tokenizer, max_steps=30, eval_every=30)
    # (the toy validation text uses characters never seen in training, so watch the
    # training loss)
    assert sum(history["train_loss"][-5:]) / 5 < history["train_loss"][0] - 0.5
    assert history["step"] == list(range(1, 31)) and max(history["grad_norm"]) > 0


def test_stop_after_replays_the_start_of_a_longer_run(tokenizer):
    _, full = _fit(tokenizer, max_steps=6)
    _, start = _fit(tokenizer, max_steps=6, stop_after=3)
    assert start["step"] == [1, 2, 3] and start["train_loss"] == full["train_loss"][:3]


def test_interrupted_run_resumes_to_the_same_state(tokenizer, tmp_path):
    straight, expected = _fit(tokenizer)
    with pytest.raises(KeyboardInterrupt):
        _fit(tokenizer, tmp_path / "ckpt", stop_at=2)
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["step"] == 2
    resumed, history = _fit(tokenizer, tmp_path / "ckpt")
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    assert (
        history["train_loss"] == expected["train_loss"]
        and history["val_loss"] == expected["val_loss"]
    )
    assert history["lr"] == expected["lr"]
    # the optimizer's moments were restored too: one more identical step from both gives
    # identical weights
    # finished run: returns at once, loaded from the checkpoint
    again, _ = _fit(tokenizer, tmp_path / "ckpt")
    torch.testing.assert_close(
        again.state_dict(), straight.state_dict(), rtol=0, atol=0
    )


def test_half_written_checkpoint_is_never_loaded(tokenizer, tmp_path):
    _fit(tokenizer, tmp_path / "ckpt", max_steps=2)
    (
        tmp_path / "ckpt" / COMPLETE_MARKER
    ).unlink()  # as if the write had stopped before the end
    model_cfg, train_cfg = tiny(tokenizer, max_steps=2)
    model = pt.build_model(model_cfg, tokenizer, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="no completion marker"):
        assert pt.load_checkpoint(tmp_path / "ckpt", model) is None
    torch.testing.assert_close(model.state_dict(), before)


@pytest.mark.parametrize(
    "damage", ["truncate-weights", "garbage-state", "delete-optimizer"]
)
def test_corrupt_checkpoint_raises_a_clear_error(tokenizer, tmp_path, damage):
    _fit(tokenizer, tmp_path / "ckpt", max_steps=2)
    folder = tmp_path / "ckpt"
    if damage == "truncate-weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage-state":
        (folder / "state.json").write_text("{not json")
    else:
        (folder / "optimizer.pt").unlink()
    with pytest.raises(pt.CheckpointError, match="rm -r"):
        _fit(tokenizer, folder, max_steps=2)


def test_checkpoint_of_another_configuration_is_refused(tokenizer, tmp_path):
    _fit(tokenizer, tmp_path / "ckpt", max_steps=2)
    with pytest.raises(pt.CheckpointError, match="another training configuration"):
        _fit(tokenizer, tmp_path / "ckpt", max_steps=2, lr=5e-3)


def test_base_model_round_trips_through_the_cache(tokenizer):
    model, _ = _fit(tokenizer, max_steps=1)
    folder = pt.save_base_model("ci", model, tokenizer, {"note": 1})
    where = dict(profile="ci", device=torch.device("cpu"))
    loaded, loaded_tokenizer = pt.load_base_model(**where)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    assert loaded_tokenizer.decode(loaded_tokenizer("to be")["input_ids"]) == "to be"
    (folder / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(pt.CheckpointError, match="delete"):
        pt.load_base_model(**where)


# --- bits per character ---------------------------------------------------------------


class Uniform(torch.nn.Module):
    """A 'model' whose logits are all equal: every token costs ln V nats."""

    def __init__(self, vocab_size, block_size):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=block_size)
        self.vocab_size = vocab_size

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(
            logits=torch.zeros(*input_ids.shape, self.vocab_size) + self.weight
        )


def test_bits_per_char_is_total_nats_over_ln2_chars():
    assert pt.bits_per_char(math.log(2) * 10, 10) == pytest.approx(1.0)
    assert pt.bits_per_char(6.0, 3) == pytest.approx(6.0 / 3 / math.log(2))
    for bad in [(1.0, 0), (-1.0, 5), (float("nan"), 5)]:
        with pytest.raises(ValueError):
            pt.bits_per_char(*bad)


@pytest.mark.parametrize(
    "block_size, stride",
    [(1, None), (7, None), (16, None), (1000, None), (6, 3), (5, 1), (8, 5)],
)
def test_uniform_model_scores_log2_v_bits_per_token(tokenizer, block_size, stride):
    text = "To be, or not to be"
    model = Uniform(len(tokenizer), block_size)
    score = pt.score_text(
        model, tokenizer, text, block_size=block_size, stride=stride, batch_size=3
    )
    assert (
        score.n_tokens == len(text) == score.n_chars
    )  # characters: one token each, every one predicted once
    assert score.loss == pytest.approx(math.log(len(tokenizer)))
    assert score.bpc == pytest.approx(math.log2(len(tokenizer)))
    assert score.perplexity == pytest.approx(len(tokenizer))


def test_bpc_of_a_subword_model_divides_by_characters_not_tokens():
    from book_utils.tokenization import train_bpe_tokenizer

    bpe = train_bpe_tokenizer([TRAIN_TEXT], vocab_size=300)
    text = "Whether 'tis nobler in the mind"
    score = pt.score_text(Uniform(len(bpe), 8), bpe, text)
    assert score.n_tokens < score.n_chars == len(text)
    assert score.bpc == pytest.approx(score.n_tokens * math.log2(len(bpe)) / len(text))
    assert score.bpc == pytest.approx(score.loss / math.log(2) / score.chars_per_token)


def test_empty_text_cannot_be_scored(tokenizer):
    with pytest.raises(ValueError, match="non-empty"):
        pt.score_text(Uniform(len(tokenizer), 4), tokenizer, "")
    with pytest.raises(ValueError, match="stride"):
        pt.score_text(Uniform(len(tokenizer), 4), tokenizer, "abc", stride=5)


class Bigram(torch.nn.Module):
    """A model that only looks at the previous token: its score must not depend on the
    windows."""

    def __init__(self, vocab_size, block_size):
        super().__init__()
        self.table = torch.nn.Embedding(vocab_size, vocab_size)
        torch.nn.init.normal_(
            self.table.weight, generator=torch.Generator().manual_seed(0)
        )
        self.config = SimpleNamespace(max_position_embeddings=block_size)

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=self.table(input_ids))


def test_sliding_windows_score_each_token_once_with_its_own_history(tokenizer):
    text = TRAIN_TEXT[:300]
    model = Bigram(len(tokenizer), 16)
    ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)[
        "input_ids"
    ]
    logp = torch.log_softmax(model.table.weight, -1)
    exact = -sum(logp[a, b].item() for a, b in zip(ids, ids[1:]))
    for block_size, stride in [(16, None), (16, 8), (16, 3), (300, 100)]:
        score = pt.score_text(
            model, tokenizer, text, block_size=block_size, stride=stride, batch_size=4
        )
        assert score.nll == pytest.approx(exact, rel=1e-5)


def test_char_tokenizer_round_trips_and_maps_unknowns():
    tok = pt.char_tokenizer("abc\n ")
    ids = tok("ab c\n", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 and tok.decode(ids) == "ab c\n"
    assert tok("z", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    with pytest.raises(ValueError):
        pt.char_tokenizer("")


def test_float16_training_scales_the_loss_and_clips_true_gradients(tokenizer):
    """fp16 autocast needs a GradScaler; the clipped and logged gradient norm must be
    the unscaled one."""
    data = pt.build_lm_datasets(splits(), tokenizer, 16)
    model_cfg, train_cfg = tiny(
        tokenizer, max_steps=4, checkpoint_every=4, eval_every=4
    )
    norms = {}
    for dtype in (torch.float32, torch.float16):
        model = pt.build_model(model_cfg, tokenizer, seed=0)
        history = pt.train(
            model, data, train_cfg, dtype=dtype, progress=False, log=None
        )
        norms[dtype] = history["grad_norm"]
        assert all(math.isfinite(v) for v in history["train_loss"])
    # the scaler multiplies the loss by 65,536; without unscaling, the norms would be
    # that much larger
    assert math.isclose(norms[torch.float16][0], norms[torch.float32][0], rel_tol=0.05)
