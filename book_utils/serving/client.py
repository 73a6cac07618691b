"""The client side of chapter 5.2's service, with the standard library only: requests,
one streamed chat reply timed token by token, and load tests ("Serving", "Streaming
tokens").

:func:`post_json` and :func:`load_test` call ``POST /generate``. :func:`stream_chat`
reads one ``POST /v1/chat/completions`` reply as server-sent events and times it:
the time to the first token (TTFT), the total time, the text and its tokens;
:func:`chat_load_test` sends many chat requests at a given concurrency, streamed or
not, and reports latency percentiles, the median TTFT and tokens per second. Without
streaming the first token reaches the user with the last one, so there TTFT is the
whole latency.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def post_json(url: str, payload, timeout: float = 60.0) -> tuple[int, dict]:
    """POST ``payload`` (a dict, or a raw ``str``/``bytes`` body to send as is) and
    return ``(status, json)``."""
    body = (
        payload
        if isinstance(payload, bytes)
        else (
            payload.encode()
            if isinstance(payload, str)
            else json.dumps(payload).encode()
        )
    )
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation (numpy's default)."""
    import numpy as np

    if not len(values):
        raise ValueError("no values to take a percentile of")
    return float(np.percentile(values, q))


def load_test(
    url: str, payloads: list[dict], concurrency: int, timeout: float = 120.0
) -> dict:
    """Send every payload to ``url`` with at most ``concurrency`` requests in flight;
    report ``{"requests", "ok", "errors", "p50_s", "p95_s", "max_s", "requests_per_s",
    "tokens_per_s", "wall_s"}`` (latency = from sending to the full answer; tokens =
    generated tokens reported by the server)."""
    _check_load(payloads, concurrency)

    def one(payload):
        start = time.perf_counter()
        status, body = post_json(url, payload, timeout)
        return status, body, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, payloads))
    wall = time.perf_counter() - start
    ok = [(body, seconds) for status, body, seconds in results if status == 200]
    latencies = [seconds for _, seconds in ok] or [float("nan")]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "max_s": max(latencies),
        "requests_per_s": len(ok) / wall,
        "tokens_per_s": sum(body["new_tokens"] for body, _ in ok) / wall,
        "wall_s": wall,
    }


def _check_load(payloads, concurrency) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    if not payloads:
        raise ValueError("a load test needs at least one payload")


def _chat_payload(payload: dict, stream: bool) -> dict:
    if not isinstance(payload, dict) or "messages" not in payload:
        raise ValueError(
            "a chat payload is a dict with 'messages', e.g. "
            "{'messages': [{'role': 'user', 'content': 'Hi'}], 'max_tokens': 32}"
        )
    payload = {**payload, "stream": stream}
    if stream:
        payload.setdefault("stream_options", {"include_usage": True})
    return payload


def _result(status, text="", tokens=0, ttft=None, total=0.0, finish=None, error=None):
    return {
        "status": status,
        "ok": status == 200 and error is None,
        "text": text,
        "tokens": tokens,
        "ttft_s": ttft,
        "total_s": total,
        "finish_reason": finish,
        "error": error,
    }


def stream_chat(url: str, payload: dict, timeout: float = 60.0) -> dict:
    """POST ``payload`` to ``url`` (``.../v1/chat/completions``) with ``stream: true``
    and read the server-sent events as they arrive.

    Returns ``{"status", "ok", "text", "tokens", "ttft_s", "total_s",
    "finish_reason", "error"}``: ``ttft_s`` is the time from sending to the first
    chunk that carries a token; ``tokens`` the server's ``completion_tokens`` (asked
    for with ``stream_options.include_usage``), else the number of token chunks;
    ``error`` the API's message when it refused (``status`` 4xx/5xx), or an error
    event in the stream, or the connection failed (``status`` 0).
    """
    body = json.dumps(_chat_payload(payload, stream=True)).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    start = time.perf_counter()
    pieces, chunks, ttft, finish, tokens, error = [], 0, None, None, None, None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    error = event["error"].get("message", "error event")
                    break
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices", []):
                    delta = choice.get("delta", {})
                    if delta.get("content") is not None:
                        ttft = ttft if ttft is not None else time.perf_counter() - start
                        chunks += 1
                        pieces.append(delta["content"])
                    finish = choice.get("finish_reason") or finish
    except urllib.error.HTTPError as refused:
        answer = json.loads(refused.read() or b"{}")
        message = (answer.get("error") or {}).get("message") or str(answer)
        return _result(refused.code, total=time.perf_counter() - start, error=message)
    except OSError as failed:  # refused connection, timeout, reset
        return _result(0, total=time.perf_counter() - start, error=str(failed))
    total = time.perf_counter() - start
    tokens = chunks if tokens is None else tokens
    return _result(status, "".join(pieces), tokens, ttft, total, finish, error)


def _chat_whole(url: str, payload: dict, timeout: float) -> dict:
    """One non-streamed chat request, in :func:`stream_chat`'s format."""
    start = time.perf_counter()
    try:
        status, body = post_json(url, _chat_payload(payload, stream=False), timeout)
    except OSError as failed:
        return _result(0, total=time.perf_counter() - start, error=str(failed))
    total = time.perf_counter() - start
    if status != 200:
        error = (body.get("error") or {}).get("message") or str(body)
        return _result(status, total=total, error=error)
    choice = body["choices"][0]
    tokens = body["usage"]["completion_tokens"]
    text, finish = choice["message"]["content"], choice["finish_reason"]
    return _result(status, text, tokens, total, total, finish)


def chat_load_test(
    url: str,
    payloads: list[dict],
    concurrency: int,
    *,
    stream: bool = True,
    timeout: float = 120.0,
) -> dict:
    """Send every chat payload to ``url`` (``.../v1/chat/completions``) with at most
    ``concurrency`` requests in flight, streamed or not.

    Reports ``{"concurrency", "stream", "requests", "ok", "errors", "p50_s", "p95_s",
    "max_s", "p50_ttft_s", "p95_ttft_s", "requests_per_s", "tokens_per_s",
    "wall_s"}``: latency from sending to the last byte, TTFT to the first token (the
    whole latency without streaming), tokens the server's ``completion_tokens`` of
    the successful requests, per second of wall time.
    """
    _check_load(payloads, concurrency)
    for payload in payloads:
        _chat_payload(payload, stream)  # a bad payload fails before any request

    def one(payload):
        if stream:
            return stream_chat(url, payload, timeout)
        return _chat_whole(url, payload, timeout)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, payloads))
    wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    latencies = [r["total_s"] for r in ok] or [float("nan")]
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None] or [float("nan")]
    return {
        "concurrency": concurrency,
        "stream": stream,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "max_s": max(latencies),
        "p50_ttft_s": percentile(ttfts, 50),
        "p95_ttft_s": percentile(ttfts, 95),
        "requests_per_s": len(ok) / wall,
        "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "wall_s": wall,
    }
