"""What the service's two endpoints accept and answer (chapter 5.2, "Serving").

``POST /generate`` is the book's own small protocol (:class:`GenerateRequest`,
:class:`GenerateResponse`; errors ``{"detail": "<field>: <what is wrong>"}``).
``POST /v1/chat/completions`` speaks OpenAI's chat-completions protocol
(:class:`ChatCompletionRequest`), so the official ``openai`` client and every tool
built on it can call our model; its errors have OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` (:class:`APIError`), with
``param`` naming the bad field the way OpenAI does (``messages.[0].role``).

Both request models refuse unknown fields (a typo should not be silently ignored);
the chat request is also *strict*: ``"max_tokens": "5"`` is a wrong type, not 5.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

#: Limits of the service; a request outside them is refused with a 4xx naming the field.
MAX_NEW_TOKENS = 128
#: OpenAI accepts at most four stop strings.
MAX_STOP_STRINGS = 4


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


def detail_message(errors) -> str:
    """``/generate``'s 422 text: ``"<field>: <what is wrong>"`` for each pydantic
    error, joined with ``"; "``."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)


# --- OpenAI chat completions ----------------------------------------------------------


class ChatMessage(BaseModel):
    """One turn of the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # one line on purpose: pydantic publishes this docstring as the schema's description
    """The JSON body of ``POST /v1/chat/completions`` (OpenAI's protocol, the fields this server implements); null means the default."""  # noqa: E501

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="echoed in the answer")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="the newer name of max_tokens"
    )
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="0 means greedy decoding; default 1"
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(
        None, description="up to 4 strings; the reply ends before the first one"
    )
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, description="only 1 is supported")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n):
        if n is not None and n != 1:
            raise PydanticCustomError(
                "n_unsupported",
                "only n=1 is supported: this server writes one reply per request, "
                "got {n}",
                {"n": n},
            )
        return n

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop):
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS:
            raise PydanticCustomError(
                "too_many_stops",
                "at most {limit} stop strings, got {count}",
                {"limit": MAX_STOP_STRINGS, "count": len(strings)},
            )
        if any(not s for s in strings):
            raise PydanticCustomError("empty_stop", "a stop string must not be empty")
        return stop

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class APIError(Exception):
    """An error answered in OpenAI's shape, with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or (
            "invalid_request_error" if status < 500 else "server_error"
        )

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


#: pydantic names the branch of a union (``stop: str | list[str]``) in the location
_UNION_TAGS = ("str", "list[str]")


def openai_param(loc) -> str | None:
    """OpenAI's name of a field from a pydantic error location:
    ``("body", "messages", 0, "role")`` → ``"messages.[0].role"``."""
    parts = [
        f"[{p}]" if isinstance(p, int) else str(p)
        for p in loc
        if p not in ("body", *_UNION_TAGS)
    ]
    return ".".join(parts) or None


def validation_error(errors) -> APIError:
    """The 400 for a request that pydantic refused: the message names every bad field,
    ``param`` the first one; a body that is not JSON at all has no ``param``."""
    for err in errors:
        if err.get("type") == "json_invalid":
            why = (err.get("ctx") or {}).get("error")
            return APIError(
                400,
                "the body is not valid JSON" + (f" ({why})" if why else ""),
                code="invalid_json",
            )
    parts, params = [], []
    for err in errors:
        param = openai_param(err.get("loc", ()))
        params.append(param)
        parts.append(f"{param or 'body'}: {err.get('msg')}")
    return APIError(400, "; ".join(parts), param=params[0] if params else None)
