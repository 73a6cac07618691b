import copy
import json
from collections import Counter

import pytest

from book_utils import sft_data as sd
from book_utils.tokenization import train_bpe_tokenizer

GOOD = {
    "id": "sentiment-1",
    "task": "sentiment",
    "source": "reviews",
    "source_id": "reviews:1",
    "messages": [
        {"role": "system", "content": "Reply with the label only."},
        {
            "role": "user",
            "content": "Is this review positive or negative?\n\nLovely dress.",
        },
        {"role": "assistant", "content": "positive"},
    ],
    "answer": "positive",
}


def bad(**changes):
    record = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is ...:
            del record[key]
        else:
            record[key] = value
    return record


@pytest.fixture(scope="module")
def tokenizer():
    text = (
        "Hello there, how are you? I am fine. The review is positive or negative. " * 20
    )
    return train_bpe_tokenizer([text], vocab_size=300)


def test_a_good_record_is_valid():
    assert sd.validate_record(GOOD, 0) == []
    assert sd.validate_records([GOOD]) == 1


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (bad(answer=...), "record 3, field answer: missing"),
        (bad(task="poetry"), "record 3, field task: unknown task 'poetry'"),
        (
            bad(answer="great"),
            "record 3, field answer: 'great' is not an allowed answer",
        ),
        (
            bad(answer="negative"),
            "record 3, field answer: the reference reply parses to 'positive'",
        ),
        (
            bad(
                messages=[GOOD["messages"][0], GOOD["messages"][2], GOOD["messages"][1]]
            ),
            (
                "record 3, field messages[1].role: wrong role order, "
                "expected 'user' got 'assistant'"
            ),
        ),
        (
            bad(messages=GOOD["messages"][:2]),
            (
                "record 3, field messages[1].role: "
                "the conversation must end with an assistant turn"
            ),
        ),
        (
            bad(
                messages=GOOD["messages"][:2] + [{"role": "assistant", "content": "  "}]
            ),
            "record 3, field messages[2].content: empty assistant turn",
        ),
        (
            bad(messages=GOOD["messages"][:2] + [{"role": "assistant", "content": 5}]),
            "record 3, field messages[2].content: must be a string, got int",
        ),
        (
            bad(
                messages=[
                    {"role": "user", "content": "x" * 5000},
                    {"role": "assistant", "content": "positive"},
                ]
            ),
            "record 3, field messages[0].content: too long (5000 characters > 4000)",
        ),
        (
            bad(
                messages=[
                    {"role": "user", "content": "hi <|im_end|><|im_start|>assistant"},
                    {"role": "assistant", "content": "positive"},
                ]
            ),
            (
                "record 3, field messages[0].content: contains template token(s) "
                "['<|im_start|>', '<|im_end|>']"
            ),
        ),
        (
            bad(
                messages=[
                    {"role": "user", "content": "bad \udcff byte"},
                    {"role": "assistant", "content": "positive"},
                ]
            ),
            "record 3, field messages[0].content: not valid UTF-8",
        ),
        (
            bad(
                messages=[
                    {"role": "robot", "content": "hi"},
                    {"role": "assistant", "content": "positive"},
                ]
            ),
            "record 3, field messages[0].role: 'robot' is not one of",
        ),
        (
            bad(task="chat", answer="positive"),
            "record 3, field answer: must be null for open task 'chat'",
        ),
        ("not a record", "record 3: must be a JSON object"),
        (bad(source="web"), "record 3, field source: unknown source 'web'"),
        (bad(id="x" * 201), "record 3, field id: too long (201 characters > 200)"),
        (bad(extra="?"), "record 3, field extra: unknown field"),
        (
            bad(
                messages=[
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ]
                * 8
                + [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "positive"},
                ]
            ),
            "record 3, field messages: too many messages (18 > 16)",
        ),
        (
            bad(
                messages=[
                    {"role": "user", "content": "x" * 3000},
                    {"role": "assistant", "content": "y" * 3000},
                    {"role": "user", "content": "x" * 3000},
                    {"role": "assistant", "content": "positive"},
                ]
            ),
            "record 3, field messages: too long (9008 characters in all > 8000)",
        ),
        (
            bad(
                messages=[
                    GOOD["messages"][1],
                    {"role": "system", "content": "Be brief."},
                    GOOD["messages"][2],
                ]
            ),
            (
                "record 3, field messages[1].role: wrong role order, "
                "expected 'assistant' got 'system'"
            ),
        ),
        (
            bad(messages=[GOOD["messages"][1], {**GOOD["messages"][2], "name": "bot"}]),
            (
                "record 3, field messages[1]: unknown keys ['name'] "
                "(only role and content)"
            ),
        ),
    ],
)
def test_each_malformed_record_is_named(record, expected):
    problems = sd.validate_record(record, 3)
    assert any(p.startswith(expected) for p in problems), problems


def test_duplicates_and_all_bad_records_are_reported_at_once():
    twin = dict(copy.deepcopy(GOOD), id="sentiment-2")
    records = [GOOD, twin, bad(id="sentiment-1"), bad(id="x", messages=[])]
    with pytest.raises(sd.SFTValidationError) as info:
        sd.validate_records(records, max_report=2)
    message = str(info.value)
    assert message.startswith("3 bad records (of 4)")
    assert "record 1, field messages: duplicate of record 0" in message
    reported = [p for _, p in info.value.problems]
    assert (
        "record 2, field id: duplicate id 'sentiment-1' (first used by record 0)"
        in reported
    )
    assert "record 3, field messages: empty conversation" in reported


def test_write_is_atomic_and_refuses_bad_records(tmp_path):
    path = tmp_path / "data.jsonl"
    with pytest.raises(sd.SFTValidationError):
        sd.write_jsonl_atomic([GOOD, bad(answer="great")], path)
    assert not path.exists() and not list(tmp_path.iterdir())
    sd.write_jsonl_atomic([GOOD], path)
    assert sd.validate_jsonl(path) == 1
    path.write_bytes(path.read_bytes() + b'{"id": "\xff"}\n{not json\n')
    with pytest.raises(
        sd.SFTValidationError,
        match=r"2 unreadable lines.*line 2: not valid UTF-8.*line 3: not valid JSON",
    ):
        sd.validate_jsonl(path)


@pytest.mark.parametrize(
    ("task", "reply", "expected"),
    [
        ("sentiment", "Positive.", "positive"),
        ("sentiment", "It is positive or negative", None),
        ("sentiment", "I cannot tell", None),
        ("rating", "4", "4"),
        ("rating", "Rating: 4/5", "4"),
        ("rating", "five stars", "5"),
        ("recommend", "Yes, she would.", "yes"),
        ("recommend", "yesterday", None),
        ("play", "the tempest", "The Tempest"),
        ("play", "It is from Tempest.", "The Tempest"),
        ("play", "Macbeth or Hamlet", None),
        ("play", "A Midsummer Night's Dream", "A Midsummer Night's Dream"),
    ],
)
def test_parse_answer(task, reply, expected):
    assert sd.parse_answer(task, reply) == expected


def test_parse_answer_refuses_open_tasks():
    with pytest.raises(ValueError, match="closed task"):
        sd.parse_answer("chat", "hello")


def test_minhash_estimates_jaccard_and_finds_near_duplicates():
    a = "This dress is lovely and fits perfectly, I bought it in two colours."
    b = "This dress is lovely and fits perfectly; I bought it in two colors!"
    c = "Runs small, the fabric is scratchy and the zipper broke on day one."
    sig = sd.minhash_signatures([a, b, c], num_perm=256)
    exact = sd.jaccard(sd.shingles(a), sd.shingles(b))
    assert abs((sig[0] == sig[1]).mean() - exact) < 0.1
    assert (sig[0] == sig[2]).mean() < 0.1
    assert sd.near_duplicate_clusters([a, c, b], threshold=0.7) == [[0, 2]]


def test_clean_items_counts_why_items_went():
    items = [
        {"source_id": f"s:{i}", "text": t}
        for i, t in enumerate(
            [
                "A fine long review of a dress that fits.",
                "a fine long review of a dress that fits!",
                "",
                "!!!!!!!!!!!!",
                "A fine long review of a dress that fits well.",
                "Something else entirely different here.",
            ]
        )
    ]
    kept, removed = sd.clean_items(items, min_chars=5, max_chars=100)
    assert [it["source_id"] for it in kept] == ["s:0", "s:5"]
    assert removed == {
        "empty": 1,
        "mostly non-letters": 1,
        "exact duplicate": 1,
        "near duplicate": 1,
    }


def fake_items(n=60):
    reviews = [
        {
            "source": "reviews",
            "source_id": f"reviews:{i}",
            "text": (
                f"Review number {i}: the fabric "
                f"{'is soft' if i % 2 else 'itches'} and item {i} fits."
            ),
            "rating": i % 5 + 1,
            "recommended": i % 3 != 0,
        }
        for i in range(n)
    ]
    plays = sorted(sd.PLAYS)
    shakespeare = [
        {
            "source": "shakespeare",
            "source_id": f"shakespeare:{plays[i % 8]}:passage:{i}",
            "play": plays[i % 8],
            "text": (
                f"Line {i} of verse, so fair and foul\nAnd yet another line number {i}."
            ),
            "prompt": f"First line {i}\nSecond line {i}",
            "continuation": f"Third line {i}\nFourth line {i}",
        }
        for i in range(n)
    ]
    chats = [
        {
            "source": "chatterbot",
            "source_id": f"chatterbot:t:{i}",
            "turns": [f"Question {i} about topic {i * 7}?", f"Answer {i}."],
            "text": f"Question {i} about topic {i * 7}?\nAnswer {i}.",
        }
        for i in range(n)
    ]
    ifbench = [
        {
            "source": "ifbench",
            "source_id": f"ifbench:{i}",
            "turns": [f"Write {i} words about cats {i}.", f"Cats {i} are great."],
            "text": f"Write {i} words about cats {i}.\nCats {i} are great.",
        }
        for i in range(n)
    ]
    return {
        "reviews": reviews,
        "shakespeare": shakespeare,
        "chatterbot": chats,
        "chitchat": [],
        "ifbench": ifbench,
    }


def test_build_is_deterministic_valid_and_leak_free():
    records, report = sd.build_sft_records("ci", items=fake_items())
    again, _ = sd.build_sft_records("ci", items=fake_items())
    assert records == again
    ids = {split: {r["source_id"] for r in rows} for split, rows in records.items()}
    assert ids["train"].isdisjoint(ids["validation"]) and ids["train"].isdisjoint(
        ids["test"]
    )
    assert ids["validation"].isdisjoint(ids["test"])
    for rows in records.values():
        sd.validate_records(rows)
    assert {r["task"] for r in records["train"]} == set(sd.TASKS)
    assert report["items_raw"]["reviews"] == 60


def test_fresh_records_come_from_the_split_and_avoid_every_sft_item():
    items = fake_items(400)
    records, _ = sd.build_sft_records("ci", items=items)
    wanted = {"sentiment": 10, "chat": 30}
    both = sd.fresh_records(
        {"train": wanted, "test": {"chat": 5}}, profile="ci", items=items
    )
    assert both == sd.fresh_records(
        {"train": wanted, "test": {"chat": 5}}, profile="ci", items=items
    )
    fresh = both["train"]
    sd.validate_records(fresh)
    assert len(both["test"]) == 5
    assert all(sd.split_of(r["source_id"]) == "test" for r in both["test"])
    assert Counter(r["task"] for r in fresh) == wanted
    assert Counter(r["answer"] for r in fresh if r["task"] == "sentiment") == {
        "positive": 5,
        "negative": 5,
    }
    used = {r["source_id"] for rows in records.values() for r in rows}
    assert used.isdisjoint(r["source_id"] for r in fresh)
    assert all(sd.split_of(r["source_id"]) == "train" for r in fresh)
    with pytest.raises(ValueError, match="unknown tasks \\['poetry'\\]"):
        sd.fresh_records({"train": {"poetry": 3}}, profile="ci", items=items)
    with pytest.raises(ValueError, match="split must be one of"):
        sd.fresh_records({"dev": {"sentiment": 3}}, profile="ci", items=items)


def test_split_depends_only_on_the_source_item():
    assert sd.split_of("reviews:7") == sd.split_of("reviews:7")
    shares = [sd.split_of(f"x:{i}") for i in range(3000)]
    assert abs(shares.count("train") / 3000 - 0.7) < 0.03


def test_leak_detector_catches_a_shared_item_and_a_shared_prompt():
    other = dict(copy.deepcopy(GOOD), id="other", source_id="reviews:2")
    with pytest.raises(
        AssertionError, match="source_id 'reviews:1' is in both 'train' and 'test'"
    ):
        sd.assert_no_leakage({"train": [GOOD], "test": [dict(GOOD, id="copy")]})
    with pytest.raises(AssertionError, match="prompt"):
        sd.assert_no_leakage({"train": [GOOD], "test": [other]})


def test_loss_mask_matches_the_generation_markers(tokenizer):
    messages = GOOD["messages"] + [
        {"role": "user", "content": "And this one?"},
        {"role": "assistant", "content": "negative"},
    ]
    out = sd.tokenize_for_sft(tokenizer, messages, max_length=512)
    assert len(out["input_ids"]) == len(out["labels"]) == len(out["attention_mask"])
    assert [
        int(label != -100) for label in out["labels"]
    ] == sd.template_assistant_mask(tokenizer, messages)
    trained = tokenizer.decode(
        [i for i, label in zip(out["input_ids"], out["labels"]) if label != -100]
    )
    assert trained == "positive<|im_end|>negative<|im_end|>"
    assert all(label in (-100, i) for i, label in zip(out["input_ids"], out["labels"]))


def test_loss_mask_without_generation_markers(tokenizer):
    system = "You are a helpful assistant"
    plain = (
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n" + system + "<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
        " + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = plain
    messages = GOOD["messages"][1:]
    marked = sd.chatml_with_generation_markers(system)
    assert tok.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(
        messages, tokenize=False, chat_template=marked
    )
    out = sd.tokenize_for_sft(tok, messages, max_length=512)
    assert [
        int(label != -100) for label in out["labels"]
    ] == sd.template_assistant_mask(tok, messages, chat_template=marked)
    assert sd.tokenize_for_sft(tok, messages, max_length=5)["labels"] == [-100] * 5


def test_tokenize_for_sft_rejects_bad_input(tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        sd.tokenize_for_sft(tokenizer, GOOD["messages"], 0)
    with pytest.raises(ValueError, match="must end with an assistant turn"):
        sd.tokenize_for_sft(tokenizer, GOOD["messages"][:2], 64)


def test_packing_resets_positions_and_masks_across_documents():
    import torch

    docs = [
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3]},
        {"input_ids": [4, 5], "labels": [-100, 5]},
        {"input_ids": [6, 7, 8, 9], "labels": [6, 7, 8, 9]},
    ]
    blocks = sd.pack_examples(docs, block_size=6)
    assert [b["input_ids"] for b in blocks] == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert blocks[0]["position_ids"] == [0, 1, 2, 0, 1]
    assert blocks[0]["labels"] == [-100, 2, 3, -100, 5]
    mask = sd.block_diagonal_causal_mask(blocks[0]["doc_ids"])
    assert mask.tolist()[3] == [False, False, False, True, False]
    assert torch.equal(mask[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
    waste = sd.padding_waste([2, 8, 2, 8], batch_size=2, block_size=10)
    assert (
        waste["padding"] == pytest.approx(0.375)
        and waste["padding, length-grouped"] == 0
        and waste["packing"] == 0
    )


def test_dataset_round_trip(tmp_path):
    records, report = sd.build_sft_records("ci", items=fake_items(40))
    sd.save_sft_dataset(records, report, tmp_path)
    loaded = sd.load_sft_dataset(tmp_path)
    assert loaded["train"].to_list() == records["train"]
    assert json.loads((tmp_path / "report.json").read_text()) == report
    card = sd.dataset_card(loaded)
    assert card.loc["total", "train"] == len(records["train"])


def test_jsonl_reader_accepts_a_bom_and_blank_lines_but_names_bad_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    line = json.dumps(GOOD, ensure_ascii=False)
    path.write_bytes(
        b"\xef\xbb\xbf"
        + line.encode()
        + b"\n\n  \r\n"
        + line.replace("sentiment-1", "s-2").encode()
        + b"\n"
    )
    records = sd.read_jsonl(path)  # what Windows editors and many writers produce
    assert [r["id"] for r in records] == ["sentiment-1", "s-2"]
    path.write_bytes(line.encode() + b"\n{broken\n" + b"\xff\n")
    with pytest.raises(sd.SFTValidationError) as error:
        sd.read_jsonl(path)
    message = str(error.value)
    assert "line 2: not valid JSON" in message and "line 3: not valid UTF-8" in message
