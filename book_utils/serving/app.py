"""The service itself: one FastAPI app around one model (chapter 5.2, "Serving").

:func:`create_app` loads nothing: it wraps a model already in memory and serves

- ``GET /health``: the limits and the counts so far;
- ``POST /generate``: the book's own protocol (:class:`~.protocol.GenerateRequest`);
- ``POST /v1/chat/completions``: OpenAI's chat-completions protocol, streamed as
  server-sent events with ``"stream": true``; ``GET /v1/models`` names the model;
- ``GET /chat``: a chat page (``chat.html``, no CDN) that streams from that endpoint.

One generation runs at a time (a lock; a CPU has no spare room for a second), under a
deadline. A streamed reply holds the lock until its last event, or until the client
goes away: the stream is then closed, which closes the generation loop and releases
the lock (:class:`LockedStream`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from importlib import resources

from book_utils.serving.completion import (
    ReplyText,
    chunk,
    completion,
    completion_id,
    reply_pieces,
    sse,
    usage,
)
from book_utils.serving.protocol import (
    MAX_NEW_TOKENS,
    APIError,
    ChatCompletionRequest,
    GenerateRequest,
    GenerateResponse,
    detail_message,
    validation_error,
)


class LockedStream:
    """The body of a streamed reply: runs the sync ``events`` generator step by step in
    a worker thread and holds ``lock`` until the stream ends, however it ends
    (finished, client gone, server stopped). :meth:`close` is idempotent."""

    def __init__(self, events: Iterator[str], lock: threading.Lock):
        self.events, self.lock = events, lock
        self._open, self._guard = True, threading.Lock()

    def close(self) -> None:
        with self._guard:
            if not self._open:
                return
            self._open = False
        try:
            self.events.close()  # GeneratorExit in the loop: generation stops
        finally:
            self.lock.release()

    async def __aiter__(self):
        from starlette.concurrency import run_in_threadpool

        try:
            while True:
                event = await run_in_threadpool(next, self.events, None)
                if event is None:
                    return
                yield event
        finally:  # also on a disconnect: starlette cancels the stream
            self.close()

    def __del__(self):  # a stream that never started still frees the model
        self.close()


def _prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def create_app(
    model,
    tokenizer,
    *,
    max_prompt_tokens: int | None = None,
    timeout_s: float = 10.0,
    queue_timeout_s: float = 30.0,
    model_name: str | None = None,
):
    """A FastAPI app serving ``model`` (already loaded, in eval mode) with
    ``tokenizer``.

    ``max_prompt_tokens`` defaults to the model's context minus the room a reply needs,
    at most :data:`MAX_NEW_TOKENS` and at most half the context (a 128-token model takes
    64-token prompts); a longer prompt, or one that leaves no room for a single new
    token, gets 413 (``/generate``) or 400 ``context_length_exceeded`` (chat). A
    generation that runs past ``timeout_s`` seconds gets 504; a request that waits more
    than ``queue_timeout_s`` for the model gets 503. On ``/generate`` bad JSON and
    invalid fields get 422 with ``{"detail": "<field>: <what is wrong>"}``; on
    ``/v1/...`` they get 400 in OpenAI's shape, ``param`` naming the field.
    ``model_name`` is what ``/v1/models`` lists and a reply names when the request
    names no model (default: the model's ``name_or_path``, else ``"book-llm"``).
    """
    import torch
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from jinja2 import TemplateError
    from starlette.background import BackgroundTask

    from book_utils.decoding import (
        DecodingConfig,
        generate,
        generate_stream,
        stop_token_ids,
    )

    context = model.config.max_position_embeddings
    stops = stop_token_ids(tokenizer)  # a reply ends at <|im_end|> (chat models) or eos
    if max_prompt_tokens is None:
        max_prompt_tokens = context - min(MAX_NEW_TOKENS, context // 2)
    name = model_name or getattr(model.config, "name_or_path", "") or "book-llm"
    lock = threading.Lock()
    app = FastAPI(title="book LLM service")
    app.state.stats = {"requests": 0, "generated_tokens": 0}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if request.url.path.startswith("/v1/"):
            error = validation_error(errors)
            return JSONResponse(status_code=error.status, content=error.body())
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(
                status_code=422, content={"detail": "the body is not valid JSON"}
            )
        return JSONResponse(status_code=422, content={"detail": detail_message(errors)})

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(status_code=exc.status, content=exc.body())

    @app.get("/health")
    def health():
        return {
            "status": "ok",
            "context": context,
            "max_prompt_tokens": max_prompt_tokens,
            **app.state.stats,
        }

    @app.post("/generate", response_model=GenerateResponse)
    def generate_endpoint(req: GenerateRequest):
        started = time.perf_counter()
        if req.chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": req.prompt}],
                tokenize=False,
                add_generation_prompt=True,
            )
        else:
            text = req.prompt
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_tokens:
            raise HTTPException(
                413,
                f"prompt: {len(ids)} tokens, more than this server's limit of "
                f"{max_prompt_tokens}",
            )
        new = min(req.max_new_tokens, context - len(ids))
        if new < 1:
            raise HTTPException(
                413,
                f"prompt: {len(ids)} tokens fill the model's context of {context} "
                "tokens; no room is left for a reply",
            )
        cfg = DecodingConfig(
            do_sample=req.do_sample,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            repetition_penalty=req.repetition_penalty,
        )
        if not lock.acquire(timeout=queue_timeout_s):
            raise HTTPException(
                503,
                f"the model is busy: waited {queue_timeout_s} s for it; retry later",
            )
        try:
            torch.manual_seed(req.seed)
            out = generate(
                model,
                torch.tensor([ids]),
                new,
                cfg,
                eos_token_id=stops,
                deadline=time.perf_counter() + timeout_s,
            )
        except TimeoutError:
            raise HTTPException(
                504,
                f"generation took longer than the server's timeout of {timeout_s} s",
            ) from None
        finally:
            lock.release()
        new_ids = out[0, len(ids) :].tolist()
        count(len(new_ids))
        return GenerateResponse(
            text=tokenizer.decode(new_ids, skip_special_tokens=True),
            prompt_tokens=len(ids),
            new_tokens=len(new_ids),
            seconds=time.perf_counter() - started,
        )

    def count(new_tokens: int) -> None:
        app.state.stats["requests"] += 1
        app.state.stats["generated_tokens"] += new_tokens

    def timeout_error() -> APIError:
        return APIError(
            504,
            f"generation took longer than the server's timeout of {timeout_s} s",
            code="timeout",
        )

    @app.get("/v1/models")
    def models():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "book"}],
        }

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatCompletionRequest):
        if req.stream_options is not None and not req.stream:
            raise APIError(
                400,
                "stream_options is only allowed with stream: true",
                param="stream_options",
            )
        if getattr(tokenizer, "chat_template", None) is None:
            raise APIError(
                400,
                "this server's tokenizer has no chat template, so it cannot format "
                "messages; send plain text to POST /generate instead",
                param="messages",
            )
        try:
            ids = _prompt_ids(tokenizer, [m.model_dump() for m in req.messages])
        except TemplateError as refused:  # e.g. "roles must alternate user/assistant"
            raise APIError(
                400,
                f"the chat template refused the messages: {refused}",
                param="messages",
            ) from None
        if not ids:
            raise APIError(400, "the messages make no tokens at all", param="messages")
        room = context - len(ids)
        if len(ids) > max_prompt_tokens or room < 1:
            raise APIError(
                400,
                f"the messages are {len(ids)} tokens after the chat template; this "
                f"server takes at most {min(max_prompt_tokens, context - 1)} (the "
                f"model's context is {context} tokens): shorten or drop messages",
                param="messages",
                code="context_length_exceeded",
            )
        limit = req.max_completion_tokens or req.max_tokens or MAX_NEW_TOKENS
        temperature = 1.0 if req.temperature is None else req.temperature
        cfg = (
            DecodingConfig(
                do_sample=True, temperature=temperature, top_p=req.top_p or 1
            )
            if temperature > 0
            else DecodingConfig()
        )
        rng = torch.Generator()  # its own RNG: a seed reproduces a reply exactly
        if req.seed is None:
            rng.seed()
        else:
            rng.manual_seed(req.seed)
        if not lock.acquire(timeout=queue_timeout_s):
            raise APIError(
                503,
                f"the model is busy: waited {queue_timeout_s} s for it; retry later",
                code="model_busy",
            )
        id_, served = completion_id(), req.model or name
        state: dict = {}

        def pieces() -> Iterator[str]:
            steps = generate_stream(
                model,
                torch.tensor([ids]),
                min(limit, room),
                cfg,
                eos_token_id=stops,
                deadline=time.perf_counter() + timeout_s,
                generator=rng,
            )
            reply = ReplyText(tokenizer, req.stop_strings())
            yield from reply_pieces(steps, reply, stops, state)
            count(state["completion_tokens"])

        if not req.stream:
            replies = pieces()
            try:
                text = "".join(replies)
            except TimeoutError:
                raise timeout_error() from None
            finally:
                replies.close()
                lock.release()
            counts = usage(len(ids), state["completion_tokens"])
            return completion(id_, served, text, state["finish_reason"], counts)

        def events():
            yield sse(chunk(id_, served, {"role": "assistant"}))
            replies = pieces()
            try:
                for piece in replies:
                    yield sse(chunk(id_, served, {"content": piece}))
            except TimeoutError:  # the status is sent already: say it in the stream
                yield sse(timeout_error().body())
                yield sse("[DONE]")
                return
            finally:  # also when the client went away (GeneratorExit here)
                replies.close()
            yield sse(chunk(id_, served, {}, state["finish_reason"]))
            if req.stream_options is not None and req.stream_options.include_usage:
                counts = usage(len(ids), state["completion_tokens"])
                yield sse({**chunk(id_, served, None), "usage": counts})
            yield sse("[DONE]")

        stream = LockedStream(events(), lock)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(stream.close),
        )

    page = resources.files("book_utils.serving").joinpath("chat.html").read_text()

    @app.get("/chat", response_class=HTMLResponse)
    def chat_page():
        return page

    return app
