import pytest
from transformers import AutoTokenizer

from book_utils import assets, cache
from book_utils import tokenization as T
from book_utils.environment import BookContext

CORPUS = [
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n",
    (
        "The slings and arrows of outrageous fortune,\n"
        "Or to take arms against a sea of troubles\n"
    )
    * 3,
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n"
    * 2,
]
TOY = [" low" * 5 + " lower" * 2 + " newest" * 6 + " widest" * 3]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who wrote Macbeth?"},
    {"role": "assistant", "content": "Shakespeare."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return T.train_bpe_tokenizer(CORPUS, 300)


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "cache"))
    import torch

    return BookContext(
        profile="ci",
        seed=0,
        device=torch.device("cpu"),
        dtype=torch.float32,
        offline=True,
    )


def test_vocabulary_is_specials_then_bytes_then_merges(tokenizer):
    assert len(tokenizer) == 300
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == list(
        T.SPECIAL_TOKENS.values()
    )
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", 0)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|pad|>", 1)
    assert len(T.bpe_merges(tokenizer)) == 300 - T.MIN_VOCAB_SIZE
    assert tokenizer.chat_template == T.CHAT_TEMPLATE


@pytest.mark.parametrize(
    "text",
    [
        CORPUS[0],
        "a . b , c ' d n't ?",
        "naïve café, 你好 🙂\ttabs  and   spaces\r\n",
        " leading space",
        "",
    ],
)
def test_round_trip_is_lossless_even_for_unseen_characters(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


def test_special_tokens_are_single_tokens_and_nothing_is_added(tokenizer):
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|><|endoftext|>")
    assert ids[0] == 2 and 3 in ids and ids[-1] == 0
    assert tokenizer.encode("the") == tokenizer.encode("the", add_special_tokens=False)


def test_chat_template_renders_chatml(tokenizer):
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWho wrote Macbeth?<|im_end|>\n"
        "<|im_start|>assistant\nShakespeare.<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(
        CHAT[:2], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith(prompt)


def test_assistant_mask_covers_the_reply_and_its_end_token(tokenizer):
    enc = tokenizer.apply_chat_template(
        CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    reply = [i for i, m in zip(ids, mask) if m]
    assert tokenizer.decode(reply) == "Shakespeare.<|im_end|>"


@pytest.mark.parametrize("vocab_size", [0, 100, 256, T.MIN_VOCAB_SIZE - 1])
def test_too_small_vocabulary_is_a_clear_error(vocab_size):
    with pytest.raises(ValueError, match=rf"at least {T.MIN_VOCAB_SIZE}"):
        T.train_bpe_tokenizer(CORPUS, vocab_size)


@pytest.mark.parametrize("texts", [[], [""], ["  \n", "\t"], iter([])])
def test_empty_corpus_is_a_clear_error(texts):
    with pytest.raises(ValueError, match="corpus is empty"):
        T.train_bpe_tokenizer(texts, 300)


def test_wrong_types_are_rejected():
    with pytest.raises(TypeError, match="not one string"):
        T.train_bpe_tokenizer("a single string", 300)
    with pytest.raises(TypeError, match="only strings"):
        T.train_bpe_tokenizer(["ok", 3], 300)
    with pytest.raises(TypeError, match="must be an int"):
        T.train_bpe_tokenizer(CORPUS, 300.0)


def test_smallest_vocabulary_has_no_merges_and_still_round_trips():
    tok = T.train_bpe_tokenizer(CORPUS, T.MIN_VOCAB_SIZE)
    assert len(tok) == T.MIN_VOCAB_SIZE and T.bpe_merges(tok) == []
    assert len(tok.encode("hello")) == 5 and tok.decode(tok.encode("héllo")) == "héllo"


def test_training_is_deterministic():
    assert T.bpe_merges(T.train_bpe_tokenizer(CORPUS, 320)) == T.bpe_merges(
        T.train_bpe_tokenizer(CORPUS, 320)
    )


def test_plain_python_bpe_learns_the_library_merges():
    tok = T.train_bpe_tokenizer(TOY, T.MIN_VOCAB_SIZE + 10)
    counts = T.byte_level_word_counts(TOY)
    assert counts == {"Ġnewest": 6, "Ġlow": 5, "Ġwidest": 3, "Ġlower": 2}
    merges = T.learn_bpe(counts, 10)
    assert merges == T.bpe_merges(tok)
    assert merges[:2] == [
        ("e", "s"),
        ("es", "t"),
    ]  # "es" occurs 6 + 3 = 9 times, the most frequent pair
    assert len(T.learn_bpe(counts, 1000)) < 1000  # stops once no pair occurs twice


def test_plain_python_bpe_matches_on_real_text():
    counts = T.byte_level_word_counts(CORPUS)
    assert T.learn_bpe(counts, 30) == T.bpe_merges(
        T.train_bpe_tokenizer(CORPUS, T.MIN_VOCAB_SIZE + 30)
    )


def test_stats_of_the_character_baseline():
    chars = T.char_tokenizer("abc ")
    assert len(chars) == 2 + 4  # end-of-text, unknown, then one id per character
    assert chars.decode(chars.encode("ab c")) == "ab c"
    stats = T.tokenization_stats(chars, "ab c d")
    assert (
        stats["tokens"] == 6
        and stats["tokens_per_word"] == 2.0
        and stats["chars_per_token"] == 1.0
    )
    assert stats["single_token_words"] == pytest.approx(
        2 / 3
    )  # "c" and "d" are one character
    assert (
        T.tokenization_stats(chars, "ab c d", unk_id=chars.unk_token_id)["unknown"] == 1
    )  # "d" never seen in training
    with pytest.raises(ValueError, match="empty"):
        T.tokenization_stats(chars, "")


def test_stats_of_a_bpe_tokenizer(tokenizer):
    stats = T.tokenization_stats(tokenizer, "to be or not to be")
    assert stats["tokens"] == len(tokenizer.encode("to be or not to be"))
    assert 0 < stats["single_token_words"] <= 1 and stats["unknown"] == 0


def test_training_text_is_the_train_split_only(monkeypatch):
    fake = {
        "train": {"b": "bbbb" * 5000, "a": "aaaa"},
        "validation": {"v": "SECRET"},
        "test": {"t": "SECRET"},
    }
    monkeypatch.setattr(assets, "shakespeare_splits", lambda: fake)
    assert T.tokenizer_training_text("full") == ["aaaa", "bbbb" * 5000]
    assert T.tokenizer_training_text("ci") == ["aaaa", ("bbbb" * 5000)[:10_000]]


def test_load_or_train_caches_and_reloads_with_autotokenizer(ctx, monkeypatch):
    monkeypatch.setattr(T, "tokenizer_training_text", lambda profile: CORPUS)
    calls = []
    original = T.train_bpe_tokenizer
    monkeypatch.setattr(
        T, "train_bpe_tokenizer", lambda *a, **k: calls.append(a) or original(*a, **k)
    )
    first = T.load_or_train_tokenizer(ctx.profile, vocab_size=300)
    second = T.load_or_train_tokenizer(ctx.profile, vocab_size=300)
    assert len(calls) == 1
    folder = cache.artifact_dir("tokenizer-bpe300", "ci")
    assert cache.is_complete(folder) and (folder / "tokenizer.json").is_file()
    reloaded = AutoTokenizer.from_pretrained(folder)
    for tok in (first, second, reloaded):
        assert tok.encode(CORPUS[0]) == first.encode(CORPUS[0])
        assert (tok.eos_token_id, tok.pad_token_id) == (0, 1)
        assert tok.apply_chat_template(
            CHAT, tokenize=False
        ) == first.apply_chat_template(CHAT, tokenize=False)
        assert tok.decode(tok.encode("naïve")) == "naïve"


def test_default_vocab_size_follows_the_profile(ctx):
    assert T.default_vocab_size(ctx.profile) == 512
    with pytest.raises(ValueError, match="too small"):
        T.load_or_train_tokenizer(ctx.profile, vocab_size=10)


def test_token_frequencies_count_every_token(tokenizer):
    counts = T.token_frequencies(tokenizer, CORPUS)
    assert counts.shape == (len(tokenizer),)
    assert counts.sum() == sum(len(tokenizer.encode(t)) for t in CORPUS)
    assert counts[:4].sum() == 0  # special tokens never come out of plain text
