"""The request bodies `peftlab serve` takes, as pydantic models after OpenAI's schema.

Strict: a field of the wrong type (`max_tokens: true`, `prompt: 5`) is an error, not
coerced, and a field the server does not implement is a 400 that names it, never
silently ignored (a client asking for `logprobs` must not get an answer without them).
Bodies are parsed by pydantic's own JSON parser, which bounds nesting depth and refuses
lone surrogates, so no body can raise anything but a validation error.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peftlab.serving.engine import ServeError

MAX_INPUTS = 64  # texts in one request


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


MAX_N = 16  # choices per prompt
MAX_STOPS = 4  # as OpenAI


class StreamOptions(Request):
    include_usage: bool = False


class Generation(Request):
    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    # Unlike OpenAI's default of 1, no temperature means greedy decoding: the answer
    # `peftlab predict` gives for the same input.
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None  # vLLM's extension; -1 or 0: off
    seed: int | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # the caller's end-user id: metadata, as OpenAI treats it

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if any(not s for s in stops):
            raise ServeError("field 'stop' holds an empty string")
        return tuple(stops)


class Completion(Generation):
    prompt: str | list[str]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False

    def logprob_count(self) -> int | None:
        return self.logprobs


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    # Clients echo assistant turns back with fields of their own (tool_calls, refusal):
    # the roles and texts are what a completion needs.
    model_config = ConfigDict(extra="allow", strict=True)
    role: str
    content: str | list[ContentPart] | None = None


class Chat(Generation):
    messages: list[Message]
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def logprob_count(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ServeError("field 'top_logprobs' needs 'logprobs': true")
        return (self.top_logprobs or 0) if self.logprobs else None


class Classify(Request):
    model: str
    input: str | list[str]


class AdapterLoad(Request):
    name: str
    path: str


class VllmAdapterLoad(Request):
    """vLLM's POST /v1/load_lora_adapter body."""

    lora_name: str
    lora_path: str


class VllmAdapterUnload(Request):
    lora_name: str
    lora_int_id: int | None = None  # vLLM clients send it; names are unique here


def parse(model: type[Request], raw: bytes) -> Request:
    """The body as `model`, or a ServeError (400) that names the offending field."""
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise ServeError(explain(exc.errors(include_url=False)[0])) from None


def explain(error: dict) -> str:
    kind, where = error["type"], ".".join(str(p) for p in error["loc"])
    if kind == "json_invalid":
        return f"malformed JSON: {error['msg']}"
    if kind == "model_type" and not error["loc"]:
        return "the JSON body must be an object"
    if kind == "missing":
        return f"missing required field '{where}'"
    if kind == "extra_forbidden":
        return f"field '{where}' is not supported by peftlab serve; leave it out"
    return f"field '{where}': {error['msg']}"


def texts_of(value: str | list[str], name: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts or len(texts) > MAX_INPUTS:
        raise ServeError(f"field '{name}' must hold 1 to {MAX_INPUTS} inputs")
    if any(not text.strip() for text in texts):
        raise ServeError(f"field '{name}' holds an empty input")
    return texts


def last_user_message(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.text or "" for p in content if p.type == "text")
        if not content or not content.strip():
            raise ServeError("the last user message has no text content")
        return content
    raise ServeError("field 'messages' has no user message")
