"""A small HTTP service around a causal LM, and the clients that measure it (taught in
chapter 5.2, book/05_deployment/02_compression_and_serving.ipynb, "Serving").

:func:`create_app` builds a FastAPI app that holds *one* model loaded once:
``POST /generate`` validates the request with pydantic (:class:`GenerateRequest`:
sampling ranges, ``max_new_tokens``), checks the prompt's length in tokens, runs
:func:`book_utils.decoding.generate` under a lock (one generation at a time on a CPU)
with a deadline, and answers 400/413/422 with a message naming the bad field, or 503/504
when the server is busy or too slow. ``POST /v1/chat/completions`` speaks OpenAI's
chat-completions protocol (the official ``openai`` client works against it), streams
the reply token by token as server-sent events with ``"stream": true``, and answers
errors in OpenAI's shape; ``GET /chat`` is a chat page that streams from it.
:class:`BackgroundServer` runs uvicorn in a thread on 127.0.0.1 and always stops it;
:func:`load_test` sends a bounded number of concurrent requests with ``urllib`` and
reports latency percentiles and throughput; :func:`stream_chat` and
:func:`chat_load_test` measure the time to the first token as well.

- :mod:`~book_utils.serving.protocol` — the request and response models of both
  endpoints, OpenAI's error shape
- :mod:`~book_utils.serving.completion` — incremental decoding, stop strings, the
  streamed chunks
- :mod:`~book_utils.serving.app` — :func:`create_app` and its routes
- :mod:`~book_utils.serving.server` — :func:`free_port`, :class:`BackgroundServer`
- :mod:`~book_utils.serving.client` — :func:`post_json`, :func:`percentile`,
  :func:`load_test`, :func:`stream_chat`, :func:`chat_load_test`
- ``chat.html`` — the chat page (package data, works offline)
"""

from book_utils.serving.app import create_app
from book_utils.serving.client import (
    chat_load_test,
    load_test,
    percentile,
    post_json,
    stream_chat,
)
from book_utils.serving.completion import ReplyText
from book_utils.serving.protocol import (
    MAX_NEW_TOKENS,
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    GenerateRequest,
    GenerateResponse,
)
from book_utils.serving.server import BackgroundServer, free_port

__all__ = [
    "MAX_NEW_TOKENS",
    "GenerateRequest",
    "GenerateResponse",
    "ChatMessage",
    "ChatCompletionRequest",
    "APIError",
    "ReplyText",
    "create_app",
    "free_port",
    "BackgroundServer",
    "post_json",
    "percentile",
    "load_test",
    "stream_chat",
    "chat_load_test",
]
