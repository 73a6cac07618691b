"""Tests of book_utils.serving: a real uvicorn server on 127.0.0.1 around a tiny random model (chapter 5)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from book_utils import serving
from book_utils.pretraining import char_tokenizer


@pytest.fixture(scope="module")
def server():
    tokenizer = char_tokenizer("abcdefghij klmnop")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).eval()
    app = serving.create_app(model, tokenizer, max_prompt_tokens=20, timeout_s=5.0)
    with serving.BackgroundServer(app) as running:
        yield running
    assert not running.thread.is_alive()  # stopped cleanly


def test_generate_and_determinism(server):
    payload = {"prompt": "abc", "max_new_tokens": 5, "do_sample": True, "top_k": 3, "seed": 7}
    status, body = serving.post_json(server.url + "/generate", payload)
    assert status == 200, body
    assert body["prompt_tokens"] == 3 and 1 <= body["new_tokens"] <= 5
    assert serving.post_json(server.url + "/generate", payload)[1]["text"] == body["text"]


@pytest.mark.parametrize(
    "payload, status, words",
    [
        ("{not json", 422, "not valid JSON"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "abc", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"prompt": "abc", "temperature": 5}, 422, "temperature"),
        ({"prompt": "abc", "top_p": 0}, 422, "top_p"),
        ({"prompt": "abc", "tempreature": 1}, 422, "tempreature"),
        ({"prompt": "a" * 30}, 413, "30 tokens"),
    ],
)
def test_validation(server, payload, status, words):
    got, body = serving.post_json(server.url + "/generate", payload)
    assert got == status
    assert words in body["detail"]


def test_load_test(server):
    payloads = [{"prompt": "ab", "max_new_tokens": 4} for _ in range(6)]
    report = serving.load_test(server.url + "/generate", payloads, concurrency=3)
    assert report["ok"] == 6 and report["errors"] == 0
    assert report["p50_s"] <= report["p95_s"] <= report["max_s"]


def test_percentile():
    assert serving.percentile([1, 2, 3, 4], 50) == 2.5
    with pytest.raises(ValueError):
        serving.percentile([], 50)


def test_timeout_gives_504():
    tokenizer = char_tokenizer("abc")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=1, max_position_embeddings=32)
    app = serving.create_app(LlamaForCausalLM(cfg).eval(), tokenizer, max_prompt_tokens=8, timeout_s=0.0)
    with serving.BackgroundServer(app) as running:
        status, body = serving.post_json(running.url + "/generate", {"prompt": "ab"})
    assert status == 504 and "timeout" in body["detail"]


def test_chat_request_stops_at_end_of_turn():
    """With ``chat: true`` the prompt goes through the chat template and the reply ends at <|im_end|>."""
    from book_utils.tokenization import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["hello there, how are you? fine thanks. " * 20], vocab_size=300)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a model that always says <|im_end|>: the residual stream is a constant vector
        model.model.embed_tokens.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[im_end] = 1.0
    app = serving.create_app(model, tokenizer, max_prompt_tokens=64, timeout_s=5.0)
    with serving.BackgroundServer(app) as running:
        status, body = serving.post_json(running.url + "/generate", {"prompt": "hello", "chat": True, "max_new_tokens": 8})
    assert status == 200, body
    assert body["new_tokens"] == 1 and body["text"] == ""
