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


# --- POST /v1/chat/completions, OpenAI's protocol ----------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('no system turns here') }}"
    "{% endif %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}a:{% endif %}"
)
HI = [{"role": "user", "content": "abc"}]
CHAT = "/v1/chat/completions"


def _chat_model(context: int = 64):
    """A random one-layer Llama whose character tokenizer has a chat template: one
    token per character, so token counts are character counts."""
    tokenizer = char_tokenizer("abcdefghij klmnop:\nsu")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=context,
    )
    return LlamaForCausalLM(cfg).eval(), tokenizer


def _chat_app(**kwargs):
    return serving.create_app(*_chat_model(), max_prompt_tokens=20, **kwargs)


@pytest.fixture(scope="module")
def chat_server():
    model, tokenizer = _chat_model()
    app = serving.create_app(model, tokenizer, max_prompt_tokens=20, timeout_s=5.0)
    with serving.BackgroundServer(app) as running:
        running.model, running.tokenizer = model, tokenizer
        yield running


def _openai(server):
    import openai

    return openai.OpenAI(
        base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=20
    )


@pytest.fixture
def client(chat_server):
    return _openai(chat_server)


def _streamed(client, **kwargs):
    """The text pieces of a streamed reply, its finish reason and usage."""
    pieces, finish, usage, roles = [], None, None, []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        assert chunk.object == "chat.completion.chunk"
        assert chunk.id.startswith("chatcmpl-")
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content is not None:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert roles == ["assistant"]
    return pieces, finish, usage


def _health(server) -> int:
    import urllib.request

    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        return response.status


def test_openai_client_gets_the_same_greedy_reply_streamed_or_not(chat_server, client):
    from book_utils import decoding

    kwargs = dict(model="tiny", messages=HI, temperature=0, max_tokens=12)
    whole = client.chat.completions.create(**kwargs)
    text = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    assert whole.model == "tiny" and whole.choices[0].message.role == "assistant"
    prompt = chat_server.tokenizer.apply_chat_template(HI, add_generation_prompt=True)
    prompt = list(prompt["input_ids"])
    assert whole.usage.prompt_tokens == len(prompt) == len("u:abc\na:")
    assert whole.choices[0].finish_reason == "length"  # this model never says eos
    assert whole.usage.completion_tokens == 12 == len(text)  # a token per character
    assert whole.usage.total_tokens == len(prompt) + 12
    # the reply of chapter 5.1's loop, decoded by hand
    ids = decoding.generate(chat_server.model, torch.tensor([prompt]), 12)
    assert chat_server.tokenizer.decode(ids[0, len(prompt) :]) == text
    pieces, finish, usage = _streamed(
        client, **kwargs, stream_options={"include_usage": True}
    )
    assert "".join(pieces) == text and finish == "length"
    assert len(pieces) == 12  # one chunk per generated token
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(prompt), 12)
    assert _streamed(client, **kwargs)[2] is None  # usage only when asked for


def test_stop_strings_cut_the_reply_before_them(client):
    kwargs = dict(model="tiny", messages=HI, temperature=0, max_tokens=24)
    text = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = text[4:6]  # two characters, so two tokens: streaming must hold one back
    cut = text.find(stop)
    for stops in (stop, ["zz", stop]):
        whole = client.chat.completions.create(**kwargs, stop=stops)
        assert whole.choices[0].message.content == text[:cut]
        assert whole.choices[0].finish_reason == "stop"
        # generation stopped at the stop string's last token
        assert whole.usage.completion_tokens == cut + len(stop)
        pieces, finish, usage = _streamed(
            client, **kwargs, stop=stops, stream_options={"include_usage": True}
        )
        assert "".join(pieces) == text[:cut] and finish == "stop"
        assert usage.completion_tokens == cut + len(stop)


def test_a_seed_reproduces_a_sampled_reply(client):
    kwargs = dict(model="tiny", messages=HI, temperature=1.0, max_tokens=20)

    def reply(**more):
        answer = client.chat.completions.create(**kwargs, **more)
        return answer.choices[0].message.content

    first = reply(seed=7)
    assert reply(seed=7) == first
    assert "".join(_streamed(client, **kwargs, seed=7)[0]) == first
    assert reply(seed=8) != first
    assert reply(seed=7, top_p=0.5) != first  # top_p is applied


@pytest.mark.parametrize(
    "payload, param, words",
    [
        ("{not json", None, "not valid JSON"),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            "messages.[0].role",
            "'user'",
        ),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.[0].content", "str"),
        ({"messages": HI, "n": 2}, "n", "only n=1"),
        ({"messages": HI, "max_tokens": 100000}, "max_tokens", "128"),
        ({"messages": HI, "max_tokens": "5"}, "max_tokens", "integer"),
        ({"messages": HI, "temperature": 2.5}, "temperature", "2"),
        ({"messages": HI, "top_p": 0}, "top_p", "greater than 0"),
        ({"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"messages": HI, "stop": ""}, "stop", "empty"),
        ({"messages": HI, "tempreature": 1}, "tempreature", "not permitted"),
        (
            {"messages": HI, "stream_options": {"include_usage": True}},
            "stream_options",
            "stream: true",
        ),
        ({"messages": [{"role": "user", "content": "a" * 30}]}, "messages", "tokens"),
        ({"messages": [{"role": "system", "content": "a"}]}, "messages", "no system"),
    ],
)
def test_bad_requests_get_400_in_openai_shape(chat_server, payload, param, words):
    status, body = serving.post_json(chat_server.url + CHAT, payload)
    assert status == 400, body
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"]
    assert _health(chat_server) == 200  # and the server carries on


def test_openai_client_sees_the_error_fields(client):
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=HI, max_tokens=100000)
    assert refused.value.status_code == 400 and refused.value.param == "max_tokens"
    long = [{"role": "user", "content": "a" * 30}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=long, stream=True)
    assert refused.value.code == "context_length_exceeded"
    assert "35 tokens" in refused.value.message  # "u:" + 30 + "\na:"


def test_stream_chat_and_chat_load_test_measure_the_endpoint(chat_server):
    url = chat_server.url + CHAT
    one = serving.stream_chat(url, {"messages": HI, "temperature": 0, "max_tokens": 6})
    assert one["ok"] and one["status"] == 200 and one["finish_reason"] == "length"
    assert one["tokens"] == 6 == len(one["text"])
    assert 0 < one["ttft_s"] <= one["total_s"]
    bad = serving.stream_chat(url, {"messages": HI, "max_tokens": 100000})
    assert bad["status"] == 400 and not bad["ok"] and "max_tokens" in bad["error"]
    greedy = {"messages": HI, "max_tokens": 4, "temperature": 0}
    payloads = [greedy] * 3 + [{"messages": []}]
    for stream in (True, False):
        report = serving.chat_load_test(url, payloads, 2, stream=stream)
        assert (report["requests"], report["ok"], report["errors"]) == (4, 3, 1)
        assert math.isclose(report["tokens_per_s"] * report["wall_s"], 12)
        assert report["p50_ttft_s"] <= report["p95_s"]
    with pytest.raises(ValueError, match="messages"):
        serving.chat_load_test(url, [{"prompt": "ab"}], 1)
    with pytest.raises(ValueError, match="concurrency"):
        serving.chat_load_test(url, payloads, 0)


def _slow_steps(monkeypatch, delay=0.0, gate=None):
    """Make create_app's generation loop wait ``delay`` s (and for ``gate``) per step;
    returns a dict with the steps taken and whether the loop was closed."""
    import threading

    from book_utils import decoding

    original, seen = decoding.generate_stream, {"steps": 0, "closed": threading.Event()}

    def slow(*args, **kwargs):
        steps = original(*args, **kwargs)

        def loop():
            try:
                for step in steps:
                    if gate is not None:
                        gate.wait(timeout=10)
                    time.sleep(delay)
                    seen["steps"] += 1
                    yield step
            finally:
                steps.close()
                seen["closed"].set()

        return loop()

    monkeypatch.setattr(decoding, "generate_stream", slow)  # before create_app
    return seen


def test_a_client_that_disconnects_mid_stream_frees_the_model(monkeypatch):
    import http.client
    import json

    seen = _slow_steps(monkeypatch, delay=0.05)
    app = _chat_app(queue_timeout_s=1.0, timeout_s=30.0)  # 56 tokens take 2.8 s
    with serving.BackgroundServer(app) as running:
        connection = http.client.HTTPConnection(running.host, running.port, timeout=10)
        body = {"messages": HI, "max_tokens": 100, "temperature": 0, "stream": True}
        connection.request(
            "POST", CHAT, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-type").startswith("text/event-stream")
        tokens = 0
        while tokens < 3:  # read a few tokens, then hang up
            line = response.readline()
            tokens += b'"content"' in line
        connection.close()
        assert seen["closed"].wait(timeout=5)  # the generation loop was closed ...
        assert seen["steps"] < 20  # ... long before its end
        status, answer = serving.post_json(
            running.url + CHAT, {"messages": HI, "max_tokens": 2}
        )
        assert status == 200, answer  # the lock was released
        assert _health(running) == 200


def test_a_busy_model_gets_503_in_openai_shape(monkeypatch):
    import threading

    import openai

    gate, results = threading.Event(), []
    _slow_steps(monkeypatch, gate=gate)
    app = _chat_app(queue_timeout_s=0.2)
    with serving.BackgroundServer(app) as running:
        first = threading.Thread(
            target=lambda: results.append(
                serving.post_json(running.url + CHAT, {"messages": HI, "max_tokens": 2})
            )
        )
        first.start()
        time.sleep(0.3)
        status, body = serving.post_json(running.url + CHAT, {"messages": HI})
        with pytest.raises(openai.InternalServerError) as busy:
            _openai(running).chat.completions.create(
                model="tiny", messages=HI, stream=True
            )
        gate.set()
        first.join(timeout=20)
    assert status == 503 and "busy" in body["error"]["message"]
    assert body["error"]["code"] == "model_busy"
    assert busy.value.status_code == 503 and busy.value.code == "model_busy"
    assert results and results[0][0] == 200


def test_a_slow_generation_gets_504_or_an_error_event():
    app = _chat_app(timeout_s=0.0)  # past the deadline at the first step
    with serving.BackgroundServer(app) as running:
        status, body = serving.post_json(running.url + CHAT, {"messages": HI})
        streamed = serving.stream_chat(running.url + CHAT, {"messages": HI})
        health = _health(running)
    assert status == 504 and body["error"]["code"] == "timeout"
    assert "timeout" in body["error"]["message"]
    # the stream had started (200): the error arrives as an event
    assert streamed["status"] == 200 and not streamed["ok"]
    assert "timeout" in streamed["error"]
    assert health == 200


class _Bytes:
    """A byte-level tokenizer by hand: token i is the byte i."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_reply_text_holds_back_half_characters_and_stop_prefixes():
    reply = serving.ReplyText(_Bytes(), stop_strings=["END"])
    pieces = [reply.add(b) for b in "é!EN".encode()]
    assert pieces == ["", "é", "!", "", ""]  # é is two bytes; "EN" may start "END"
    assert reply.add(ord("x")) == "ENx" and not reply.stopped  # it did not
    assert [reply.add(b) for b in b"yEND"] == ["y", "", "", ""]
    assert reply.stopped and reply.text == "é!ENxy" and reply.flush() == ""
    tail = serving.ReplyText(_Bytes(), stop_strings=["END"])
    assert [tail.add(b) for b in b"aEN"] == ["a", "", ""]
    assert tail.flush() == "EN"  # the reply ended: held-back text is sent


# --- GET /chat, the chat page ------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    import os
    import shutil

    chromium = (
        os.environ.get("BOOK_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if chromium is None:
        message = (
            "Debian's chromium is needed for the chat page test: "
            "`make test` installs it (apt-get install chromium)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


def test_the_chat_page_streams_a_reply_and_shows_errors(browser, monkeypatch):
    _slow_steps(monkeypatch, delay=0.03)  # tokens arrive one by one
    app = _chat_app()
    with serving.BackgroundServer(app) as running:
        expected = serving.post_json(
            running.url + CHAT, {"messages": HI, "max_tokens": 10, "temperature": 0}
        )[1]["choices"][0]["message"]["content"]
        page = browser.new_page()
        requested = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(running.url + "/chat")
        page.evaluate(
            """() => {
              window.seen = [];
              new MutationObserver(() => {
                const reply = document.querySelector('.assistant .content');
                const text = reply ? reply.textContent : '';
                if (text && text !== window.seen.at(-1)) window.seen.push(text);
              }).observe(document.getElementById('messages'),
                         {subtree: true, childList: true, characterData: true});
            }"""
        )
        page.fill("#max-tokens", "10")
        page.fill("#input", "abc")
        page.click("#send")
        page.wait_for_selector(".assistant:not(.streaming)", timeout=15_000)
        seen = page.evaluate("window.seen")
        assert len(seen) >= 2, seen  # the reply grew while it streamed
        assert seen[-1] == expected == page.inner_text(".assistant .content")
        assert page.inner_text(".user .content") == "abc"
        page.fill("#max-tokens", "100000")
        page.fill("#input", "abc")
        page.click("#send")
        page.wait_for_function("document.getElementById('error').textContent !== ''")
        error = page.inner_text("#error")
        assert "max_tokens" in error and "less than or equal to 128" in error
        assert page.locator(".turn").count() == 2  # the failed turn is not kept
        assert all(url.startswith(running.url) for url in requested)  # no CDN
        page.close()
