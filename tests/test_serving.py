"""Tests of book_utils.serving: a real uvicorn server on 127.0.0.1 around a tiny random
model (chapter 5)."""

import math
import time

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
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).eval()
    app = serving.create_app(model, tokenizer, max_prompt_tokens=20, timeout_s=5.0)
    with serving.BackgroundServer(app) as running:
        yield running
    assert not running.thread.is_alive()  # stopped cleanly


def test_generate_and_determinism(server):
    payload = {
        "prompt": "abc",
        "max_new_tokens": 5,
        "do_sample": True,
        "top_k": 3,
        "seed": 7,
    }
    status, body = serving.post_json(server.url + "/generate", payload)
    assert status == 200, body
    assert body["prompt_tokens"] == 3 and 1 <= body["new_tokens"] <= 5
    assert (
        serving.post_json(server.url + "/generate", payload)[1]["text"] == body["text"]
    )


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


def test_load_test_counts_failures_and_tokens(server):
    payloads = [{"prompt": "ab", "max_new_tokens": 4} for _ in range(5)] + [
        {"prompt": ""}
    ]  # one is invalid
    report = serving.load_test(server.url + "/generate", payloads, concurrency=3)
    assert report["requests"] == 6 and report["ok"] == 5 and report["errors"] == 1
    assert (
        5 <= report["tokens_per_s"] * report["wall_s"] <= 20
    )  # 1-4 new tokens per successful request
    assert math.isclose(report["requests_per_s"] * report["wall_s"], 5)
    with pytest.raises(ValueError, match="percentile"):
        serving.percentile([], 50)


def test_health_reports_limits_and_counts(server):
    import json
    import urllib.request

    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        before = json.loads(response.read())
    assert (
        before["status"] == "ok"
        and before["context"] == 64
        and before["max_prompt_tokens"] == 20
    )
    serving.post_json(server.url + "/generate", {"prompt": "ab", "max_new_tokens": 2})
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        after = json.loads(response.read())
    assert after["requests"] == before["requests"] + 1
    assert after["generated_tokens"] > before["generated_tokens"]


def _tiny_app(**kwargs):
    tokenizer = char_tokenizer("abc")
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=16,
    )
    return serving.create_app(LlamaForCausalLM(cfg).eval(), tokenizer, **kwargs)


def test_default_prompt_limit_leaves_room_for_a_reply():
    app = _tiny_app()  # context 16: at most half of it for the reply
    with serving.BackgroundServer(app) as running:
        ok = serving.post_json(
            running.url + "/generate", {"prompt": "a" * 8, "max_new_tokens": 4}
        )
        long = serving.post_json(running.url + "/generate", {"prompt": "a" * 9})
    assert ok[0] == 200 and ok[1]["new_tokens"] >= 1
    assert long[0] == 413 and "9 tokens" in long[1]["detail"]


def test_a_prompt_that_fills_the_context_gets_413_not_500():
    app = _tiny_app(max_prompt_tokens=16)  # the operator allows whole-context prompts
    with serving.BackgroundServer(app) as running:
        status, body = serving.post_json(
            running.url + "/generate", {"prompt": "a" * 16}
        )
    assert status == 413 and "no room" in body["detail"] and "prompt" in body["detail"]


def test_a_busy_model_gets_503(monkeypatch):
    import threading

    from book_utils import decoding

    gate, results, original = threading.Event(), [], decoding.generate

    def slow_generate(
        *args, **kwargs
    ):  # holds the model until the second request has given up
        gate.wait(timeout=10)
        return original(*args, **kwargs)

    monkeypatch.setattr(
        decoding, "generate", slow_generate
    )  # before the app imports it
    app = _tiny_app(queue_timeout_s=0.2)
    with serving.BackgroundServer(app) as running:
        first = threading.Thread(
            target=lambda: results.append(
                serving.post_json(running.url + "/generate", {"prompt": "ab"})
            )
        )
        first.start()
        time.sleep(0.3)
        second = serving.post_json(running.url + "/generate", {"prompt": "ab"})
        gate.set()
        first.join(timeout=20)
    assert second[0] == 503 and "busy" in second[1]["detail"]
    assert results and results[0][0] == 200
