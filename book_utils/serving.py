"""A small HTTP service around a causal LM, and a load test for it (taught in chapter 5,
"Serving").

:func:`create_app` builds a FastAPI app that holds *one* model loaded once:
``POST /generate`` validates the request with pydantic (:class:`GenerateRequest`:
sampling ranges, ``max_new_tokens``), checks the prompt's length in tokens, runs
:func:`book_utils.decoding.generate` under a lock (one generation at a time on a CPU)
with a deadline, and answers 400/413/422 with a message naming the bad field, or 503/504
when the server is busy or too slow. :class:`BackgroundServer` runs uvicorn in a thread
on 127.0.0.1 and always stops it; :func:`load_test` sends a bounded number of concurrent
requests with ``urllib`` and reports latency percentiles and throughput.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, ConfigDict, Field

#: Limits of the service; a request outside them is refused with a 4xx naming the field.
MAX_NEW_TOKENS = 128


class GenerateRequest(BaseModel):
    # one line on purpose: pydantic publishes this docstring as the schema's description
    """The JSON body of ``POST /generate``; unknown fields are refused (a typo should not be silently ignored)."""  # noqa: E501

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1,
        description="the text to continue, or the user's message with chat=true",
    )
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    top_k: int = Field(0, ge=0, le=1000)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0)
    do_sample: bool = False
    seed: int = Field(
        0, ge=0, description="seeds sampling, so a request can be reproduced"
    )
    chat: bool = Field(
        False,
        description="wrap the prompt as a user turn with the tokenizer's chat template",
    )


class GenerateResponse(BaseModel):
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float


def _error_message(errors) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)


def create_app(
    model,
    tokenizer,
    *,
    max_prompt_tokens: int | None = None,
    timeout_s: float = 10.0,
    queue_timeout_s: float = 30.0,
):
    """A FastAPI app serving ``model`` (already loaded, in eval mode) with
    ``tokenizer``.

    ``max_prompt_tokens`` defaults to the model's context minus the room a reply needs,
    at most :data:`MAX_NEW_TOKENS` and at most half the context (a 128-token model takes
    64-token prompts); a longer prompt, or one that leaves no room for a single new
    token, gets 413. A generation that runs past ``timeout_s`` seconds gets 504; a
    request that waits more than ``queue_timeout_s`` for the model gets 503. Bad JSON
    and invalid fields get 422 with ``{"detail": "<field>: <what is wrong>"}``.
    """
    import torch
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from book_utils.decoding import DecodingConfig, generate, stop_token_ids

    context = model.config.max_position_embeddings
    stops = stop_token_ids(tokenizer)  # a reply ends at <|im_end|> (chat models) or eos
    if max_prompt_tokens is None:
        max_prompt_tokens = context - min(MAX_NEW_TOKENS, context // 2)
    lock = threading.Lock()
    app = FastAPI(title="book LLM service")
    app.state.stats = {"requests": 0, "generated_tokens": 0}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(
                status_code=422, content={"detail": "the body is not valid JSON"}
            )
        return JSONResponse(status_code=422, content={"detail": _error_message(errors)})

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
        app.state.stats["requests"] += 1
        app.state.stats["generated_tokens"] += len(new_ids)
        return GenerateResponse(
            text=tokenizer.decode(new_ids, skip_special_tokens=True),
            prompt_tokens=len(ids),
            new_tokens=len(new_ids),
            seconds=time.perf_counter() - started,
        )

    return app


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """Run ``app`` with uvicorn in a daemon thread on ``127.0.0.1:<free port>``; use as
    a context manager.

    ``with BackgroundServer(app) as server: post_json(server.url + "/generate", {...})``
    — leaving the block (also on an error) sets ``should_exit`` and joins the thread, so
    the port is released.
    """

    def __init__(
        self,
        app,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
    ):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(
            app, host=self.host, port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the server did not start on {self.url} "
                    f"within {self.startup_timeout} s"
                )
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    if not payloads:
        raise ValueError("load_test needs at least one payload")

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
