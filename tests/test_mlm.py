"""Tests of book_utils.mlm (chapter 3, Masked-LM) against transformers' collator, loss
and fill-mask pipeline."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    pipeline,
)

from book_utils import mlm
from book_utils.assets import load_shakespeare, minilm_dir


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread, and several times faster on a busy shared
    CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture(scope="module")
def padded_lines(tokenizer):
    """Real Twelfth Night lines, padded: special tokens and padding must never be
    chosen."""
    lines = [
        line
        for line in load_shakespeare()["twelfth_night"].splitlines()
        if line.strip()
    ][:600]
    return tokenizer(
        lines, padding="max_length", truncation=True, max_length=24, return_tensors="pt"
    )["input_ids"]


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForMaskedLM(config).eval()


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("split", [(0.8, 0.1, 0.1), (1.0, 0.0, 0.0), (0.5, 0.4, 0.1)])
def test_same_seed_reproduces_the_collator_exactly(
    tokenizer, padded_lines, seed, split
):
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=0.15,
        mask_replace_prob=split[0],
        random_replace_prob=split[1],
        seed=seed,
    )
    theirs = collator(list(padded_lines))
    ours = mlm.mask_with_tokenizer(
        tokenizer,
        padded_lines,
        split=split,
        generator=torch.Generator().manual_seed(seed),
    )
    assert torch.equal(ours[0], theirs["input_ids"]) and torch.equal(
        ours[1], theirs["labels"]
    )


def test_rates_match_bert_and_the_collator_statistically(tokenizer, padded_lines):
    ids = padded_lines.repeat(8, 1)  # ~60k maskable positions
    maskable = ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=1)
    theirs = collator(list(ids))
    ours = mlm.mask_with_tokenizer(
        tokenizer, ids, generator=torch.Generator().manual_seed(2)
    )  # other draws
    mask_id = tokenizer.mask_token_id
    rates = {
        "ours": mlm.masking_rates(ids, *ours, mask_token_id=mask_id, maskable=maskable),
        "collator": mlm.masking_rates(
            ids,
            theirs["input_ids"],
            theirs["labels"],
            mask_token_id=mask_id,
            maskable=maskable,
        ),
    }
    for r in rates.values():
        assert r["protected_chosen"] == 0 and r["labels_ok"] == 1.0
    table = mlm.compare_rates(rates)
    assert (table["z"].abs() < 4.5).all(), table
    # ours and the collator's differ by no more than chance: 4.5 standard errors of a
    # difference
    for key, p in (
        ("chosen", 0.15),
        ("[MASK]", 0.8),
        ("random", 0.1),
        ("unchanged", 0.1),
    ):
        n = rates["ours"]["n_maskable" if key == "chosen" else "n_chosen"]
        assert abs(rates["ours"][key] - rates["collator"][key]) < 4.5 * math.sqrt(
            2 * p * (1 - p) / n
        )


def test_padding_and_specials_are_never_masked_and_labels_are_ignore_elsewhere(
    tokenizer, padded_lines
):
    inputs, labels = mlm.mask_with_tokenizer(
        tokenizer, padded_lines, generator=torch.Generator().manual_seed(3)
    )
    special = torch.isin(padded_lines, torch.tensor(tokenizer.all_special_ids))
    assert special.sum() > 0 and (padded_lines == tokenizer.pad_token_id).sum() > 0
    assert (labels[special] == -100).all() and torch.equal(
        inputs[special], padded_lines[special]
    )
    chosen = labels != -100
    assert torch.equal(labels[chosen], padded_lines[chosen])
    assert torch.equal(inputs[~chosen], padded_lines[~chosen])


def test_never_mask_and_global_rng(tokenizer, padded_lines):
    never = torch.zeros_like(padded_lines, dtype=torch.bool)
    never[:, :5] = True
    torch.manual_seed(0)
    a = mlm.bert_mask(
        padded_lines, mask_token_id=103, vocab_size=len(tokenizer), never_mask=never
    )
    torch.manual_seed(0)
    b = mlm.bert_mask(
        padded_lines, mask_token_id=103, vocab_size=len(tokenizer), never_mask=never
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (a[1][:, :5] == -100).all()


def test_bad_arguments_raise_clear_errors(tokenizer, padded_lines):
    kw = dict(mask_token_id=103, vocab_size=100)
    for p in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            mlm.bert_mask(padded_lines, mlm_probability=p, **kw)
    with pytest.raises(ValueError, match="sum to 1"):
        mlm.bert_mask(padded_lines, split=(0.8, 0.1, 0.2), **kw)
    with pytest.raises(ValueError, match="three fractions"):
        mlm.bert_mask(padded_lines, split=(0.9, 0.1), **kw)
    with pytest.raises(ValueError, match="no \\[MASK\\] token"):
        mlm.bert_mask(padded_lines, mask_token_id=None, vocab_size=100)
    with pytest.raises(TypeError, match="integer"):
        mlm.bert_mask(padded_lines.float(), **kw)

    class NoMask:
        mask_token = None
        mask_token_id = None

    with pytest.raises(ValueError, match="has no mask token"):
        mlm.mask_with_tokenizer(NoMask(), padded_lines)


def test_mlm_loss_matches_cross_entropy_and_the_erratum():
    # errata A7: one masked token predicted with p = 0.7 costs +0.357, not -0.357
    logits = torch.log(torch.tensor([[[0.1, 0.2, 0.7], [0.7, 0.2, 0.1]]]))
    labels = torch.tensor([[2, -100]])
    assert math.isclose(
        float(mlm.mlm_loss(logits, labels)), -math.log(0.7), rel_tol=1e-6
    )
    assert round(-math.log(0.7), 3) == 0.357
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 50, generator=g)
    labels = torch.randint(50, (4, 9), generator=g)
    labels[torch.rand(4, 9, generator=g) > 0.3] = -100
    reference = F.cross_entropy(logits.view(-1, 50), labels.view(-1), ignore_index=-100)
    assert_close(mlm.mlm_loss(logits, labels), reference)
    with pytest.raises(ValueError, match="undefined"):
        mlm.mlm_loss(logits, torch.full((4, 9), -100))
    with pytest.raises(ValueError, match="vocabulary axis"):
        mlm.mlm_loss(logits, labels[:, :3])


def test_masked_only_forward_equals_the_models_own_loss(tokenizer, tiny_model):
    blocks = mlm.encode_blocks(
        load_shakespeare()["macbeth"][:20_000], tokenizer, block_size=32, max_blocks=6
    )
    assert blocks.shape == (6, 32)
    assert (blocks[:, 0] == tokenizer.cls_token_id).all() and (
        blocks[:, -1] == tokenizer.sep_token_id
    ).all()
    inputs, labels = mlm.mask_with_tokenizer(
        tokenizer, blocks, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        ours, logits = mlm.masked_lm_forward(tiny_model, inputs, labels)
        reference = tiny_model(input_ids=inputs, labels=labels).loss
    assert logits.shape == (int((labels != -100).sum()), len(tokenizer))
    assert_close(ours, reference)
    with pytest.raises(TypeError, match="ForMaskedLM"):
        mlm.masked_lm_forward(tiny_model.bert, inputs, labels)


def test_encode_blocks_validates(tokenizer):
    with pytest.raises(ValueError, match="block_size"):
        mlm.encode_blocks("to be or not to be", tokenizer, block_size=4)
    with pytest.raises(ValueError, match="fewer than one block"):
        mlm.encode_blocks("to be or not to be", tokenizer, block_size=64)
    with pytest.raises(ValueError, match="non-empty"):
        mlm.encode_blocks("  ", tokenizer, block_size=16)


def test_short_training_lowers_validation_loss(tokenizer, tiny_model):
    text = load_shakespeare()
    train = mlm.encode_blocks(text["sonnets"], tokenizer, block_size=32, max_blocks=64)
    val = mlm.fixed_masked_batches(
        mlm.encode_blocks(text["macbeth"], tokenizer, 32, max_blocks=16), tokenizer, 8
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)
    model = BertForMaskedLM(tiny_model.config)
    before = mlm.evaluate_mlm(model, val)
    history = mlm.train_mlm(
        model,
        train,
        collator,
        val,
        steps=30,
        batch_size=8,
        lr=3e-3,
        eval_every=15,
        progress=False,
    )
    assert history.eval_steps == [15, 30] and len(history.train_loss) == 30
    assert (
        history.val_loss[-1] < before - 0.5
    )  # from ~ln(30522) = 10.3 towards word frequencies
    assert not model.training
    with pytest.raises(ValueError, match="fewer than one batch"):
        mlm.train_mlm(model, train[:2], collator, val, steps=1, batch_size=8)
    unigram = mlm.unigram_cross_entropy(train, val, len(tokenizer))
    assert 3.0 < unigram < math.log(len(tokenizer))
    assert (
        len(history.val_by_case) == 2
        and history.val_by_case[-1]["all"] == history.val_loss[-1]
    )


def test_loss_split_by_case_is_consistent(tokenizer, tiny_model):
    blocks = mlm.encode_blocks(
        load_shakespeare()["macbeth"], tokenizer, 32, max_blocks=64
    )
    val = mlm.fixed_masked_batches(blocks, tokenizer, 16, seed=5)
    for b, start in zip(val, range(0, 64, 16)):
        original, case, chosen = (
            blocks[start : start + 16],
            b["case"],
            b["labels"] != -100,
        )
        assert torch.equal(case >= 0, chosen)
        assert (b["input_ids"][case == 0] == tokenizer.mask_token_id).all()
        assert torch.equal(b["input_ids"][case == 2], original[case == 2])
        assert (b["input_ids"][case == 1] != original[case == 1]).all()
    split = mlm.evaluate_mlm(tiny_model, val, by_case=True)
    assert set(split) == {"all", *mlm.CASES}
    assert math.isclose(split["all"], mlm.evaluate_mlm(tiny_model, val), rel_tol=1e-5)
    counts = {
        name: sum(int((b["case"] == i).sum()) for b in val)
        for i, name in enumerate(mlm.CASES)
    }
    total = sum(counts.values())
    weighted = sum(split[name] * n for name, n in counts.items()) / total
    assert math.isclose(weighted, split["all"], rel_tol=1e-5)
    uni = mlm.unigram_cross_entropy(blocks, val, len(tokenizer), by_case=True)
    assert math.isclose(
        uni["all"], mlm.unigram_cross_entropy(blocks, val, len(tokenizer)), rel_tol=1e-9
    )
    with pytest.raises(ValueError, match="fixed_masked_batches"):
        mlm.evaluate_mlm(
            tiny_model, [{k: v for k, v in val[0].items() if k != "case"}], by_case=True
        )


def test_fill_mask_matches_the_pipeline_and_reads_only_mask_positions(
    tokenizer, tiny_model
):
    texts = [
        "If music be the food of [MASK], play on.",
        "Out, damned [MASK]! out, I say!",
    ]
    ours = mlm.fill_mask(tiny_model, tokenizer, texts, k=5)
    fill = pipeline("fill-mask", model=tiny_model, tokenizer=tokenizer, top_k=5)
    for text, mine in zip(texts, ours):
        theirs = fill(text)
        assert [t for t, _ in mine[0]] == [
            d["token_str"].replace(" ", "") for d in theirs
        ] or [tokenizer.convert_tokens_to_ids(t) for t, _ in mine[0]] == [
            d["token"] for d in theirs
        ]
        assert_close(
            torch.tensor([p for _, p in mine[0]]),
            torch.tensor([d["score"] for d in theirs]),
        )
    unigram = mlm.unigram_log_probs(
        torch.tensor([[2293, 2293, 1996]]), len(tokenizer)
    )  # "love love the"
    table = mlm.fill_mask_table(
        tiny_model, tokenizer, [(texts[0], "love")], k=3, unigram=unigram
    )
    assert (
        1 <= table.loc[0, "rank"] <= len(tokenizer)
        and 0 < table.loc[0, "p(answer)"] < 1
    )
    assert table.loc[0, "unigram rank"] == 1
    with pytest.raises(ValueError, match="contains no"):
        mlm.fill_mask(tiny_model, tokenizer, ["no mask here"])
    with pytest.raises(ValueError, match="one-piece"):
        mlm.fill_mask_table(tiny_model, tokenizer, [(texts[0], "surfeiting")])
    words = mlm.tied_embedding_fill(tiny_model.bert, tokenizer, texts, k=3)
    assert len(words) == 2 and len(words[0]) == 3


@pytest.fixture(scope="module")
def bpe_for_mlm():
    """A small byte-level BPE tokenizer (chapter 3's kind) given BERT's special
    tokens."""
    from book_utils.tokenization import train_bpe_tokenizer

    text = load_shakespeare()["sonnets"][:60_000]
    return mlm.with_bert_specials(train_bpe_tokenizer(text.splitlines(), 400))


def test_bpe_gets_bert_specials_and_mask_absorbs_its_space(bpe_for_mlm):
    tok = bpe_for_mlm
    n = len(tok)
    assert {tok.cls_token_id, tok.sep_token_id, tok.mask_token_id} == {
        n - 3,
        n - 2,
        n - 1,
    }
    ids = tok("the food of [MASK], play on")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    pieces = tok.convert_ids_to_tokens(ids)
    at = pieces.index("[MASK]")
    assert pieces[at - 1] != "Ġ" and pieces[at - 1].endswith(
        "of"
    )  # no lone space before the mask
    plain = tok(" love", add_special_tokens=False)["input_ids"]
    assert tok.decode(plain) == " love"  # a masked word carries its leading space
    with pytest.raises(ValueError, match="already"):
        mlm.with_bert_specials(tok)


def test_encode_blocks_keeps_line_breaks_for_bpe(bpe_for_mlm):
    tok = bpe_for_mlm
    blocks = mlm.encode_blocks(
        "Shall I compare thee\nto a summer's day?\n" * 20, tok, block_size=16
    )
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1 and (blocks == newline[0]).any()
    assert (blocks[:, 0] == tok.cls_token_id).all() and (
        blocks[:, -1] == tok.sep_token_id
    ).all()


def test_masked_accuracy_and_unigram_accuracy(bpe_for_mlm):
    from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

    tok = bpe_for_mlm
    text = load_shakespeare()["sonnets"]
    blocks = mlm.encode_blocks(text[:30_000], tok, block_size=32)
    val = mlm.fixed_masked_batches(blocks[:32], tok, batch_size=16, seed=3)
    torch.manual_seed(0)
    config = RobertaPreLayerNormConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32 + tok.pad_token_id + 1,
        pad_token_id=tok.pad_token_id,
    )
    model = RobertaPreLayerNormForMaskedLM(config).eval()
    b = val[0]
    with torch.no_grad():  # the RoBERTa head (.lm_head) works like BERT's (.cls)
        ours, _ = mlm.masked_lm_forward(model, b["input_ids"], b["labels"])
        assert_close(ours, model(input_ids=b["input_ids"], labels=b["labels"]).loss)
    acc = mlm.masked_accuracy(model, val)
    assert set(acc) == {"all", *mlm.CASES} and all(
        0.0 <= v <= 1.0 for v in acc.values()
    )
    by_hand = []
    for batch in val:  # argmax of the full logits at the labelled positions
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        chosen = batch["labels"] != -100
        by_hand.append(logits[chosen].argmax(-1) == batch["labels"][chosen])
    assert math.isclose(
        acc["all"], torch.cat(by_hand).double().mean().item(), rel_tol=1e-9
    )
    uni = mlm.unigram_accuracy(blocks, val, len(tok))
    most = torch.bincount(blocks.flatten(), minlength=len(tok)).argmax()
    labels = torch.cat([v["labels"][v["labels"] != -100] for v in val])
    assert math.isclose(
        uni["all"], (labels == most).double().mean().item(), rel_tol=1e-9
    )
    with pytest.raises(ValueError, match="case"):
        mlm.masked_accuracy(
            model, [{"input_ids": b["input_ids"], "labels": b["labels"]}]
        )


def test_masked_only_forward_works_for_modernbert(bpe_for_mlm):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    tok = bpe_for_mlm
    blocks = mlm.encode_blocks(
        load_shakespeare()["sonnets"][:20_000], tok, block_size=32, max_blocks=8
    )
    inputs, labels = mlm.mask_with_tokenizer(
        tok, blocks, generator=torch.Generator().manual_seed(1)
    )
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        pad_token_id=tok.pad_token_id,
        cls_token_id=tok.cls_token_id,
        sep_token_id=tok.sep_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    model = ModernBertForMaskedLM(config).eval()
    with torch.no_grad():
        ours, logits = mlm.masked_lm_forward(model, inputs, labels)
        assert_close(ours, model(input_ids=inputs, labels=labels).loss)
    assert logits.shape == (int((labels != -100).sum()), len(tok))
    top = mlm.fill_mask(model, tok, ["the food of [MASK], play on"], k=3)
    assert (
        len(top) == 1 and len(top[0][0]) == 3
    )  # the tokenizer's output feeds the model as is
