"""Request and response bodies of the OpenAI-compatible API (pydantic), and OpenAI's error format.

Types are strict, as OpenAI's API is: ``max_tokens: true`` or ``"stream": "yes"`` is a 400, not 1 or True (an
integer is still a number for the float fields). Only the fields scalelab acts on are declared; other OpenAI fields a
client may send (``user``, ``logit_bias``...) are accepted and ignored, as most OpenAI-compatible servers do. Two
extensions borrowed from vLLM: ``top_k`` and ``ignore_eos`` (generate exactly ``max_tokens`` tokens; the benchmark
uses it).

    from scalelab.serve.schemas import ChatCompletionRequest
    req = ChatCompletionRequest.model_validate({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_SEQUENCES = 4  # as OpenAI


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ----------------------------------------------------------------------------------------------- requests

class GenerationRequest(BaseModel):
    """The sampling fields both generation routes take (chat completions and completions)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(None, description="model id from GET /v1/models; omitted = the served model")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate at most; omitted = the server limit")
    max_completion_tokens: int | None = Field(None, ge=1, description="newer OpenAI name for max_tokens")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = off (vLLM extension)")
    seed: int | None = Field(None, description="makes sampling reproducible")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP_SEQUENCES} stop strings")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only 1 choice is supported")
    ignore_eos: bool = Field(False, description="do not stop at the end-of-turn token (vLLM extension)")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        """The content as plain text (OpenAI's list-of-parts form is joined; only text parts are allowed)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] = Field(..., description="a text prompt (a list must hold exactly one string)")
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError(f"exactly one prompt is supported, got a list of {len(v)}")
            v = v[0]
        if v == "":
            raise ValueError("the prompt is empty")
        return v


GenerationRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()
ChatMessage.model_rebuild()


# ----------------------------------------------------------------------------------------------- responses

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(id_: str, model: str, text: str, finish_reason: str | None, prompt_tokens: int,
                    completion_tokens: int) -> dict[str, Any]:
    return {"id": id_, "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(id_: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None,
               with_usage: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage:
        out["usage"] = None
    return out


def completion(id_: str, model: str, text: str, finish_reason: str | None, prompt_tokens: int,
               completion_tokens: int) -> dict[str, Any]:
    return {"id": id_, "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_chunk(id_: str, model: str, created: int, text: str, finish_reason: str | None = None,
                     with_usage: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id_, "object": "text_completion", "created": created, "model": model,
                           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage:
        out["usage"] = None
    return out


def usage_chunk(id_: str, model: str, created: int, object_: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices, only the token counts."""
    return {"id": id_, "object": object_, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}
