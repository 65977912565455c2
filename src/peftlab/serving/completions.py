"""Completions and chat completions in OpenAI's shapes: from a request body to decoding
settings, and from sequences (finished, or streaming step by step) to choices, chunks,
log-probabilities and usage."""

from __future__ import annotations

import json
import time
import uuid

from peftlab.serving import schemas
from peftlab.serving.decoding import Sampling
from peftlab.serving.engine import ServeError


def sampling_of(body: schemas.Generation, max_tokens: int) -> list[Sampling]:
    """One Sampling per choice (n of them): choice i of a seeded request uses seed + i,
    so the choices differ and the request is still reproducible."""
    seed = body.seed
    return [
        Sampling(
            max_tokens=max_tokens,
            temperature=body.temperature or 0.0,
            top_p=body.top_p or 1.0,
            top_k=max(0, body.top_k or 0),
            seed=None if seed is None else seed + i,
            stop=body.stops(),
            logprobs=body.logprob_count(),
        )
        for i in range(body.n)
    ]


def refuse_decoding_fields(body: schemas.Generation, why: str) -> None:
    """For models that answer without token-by-token decoding (classifiers answer with
    their label; encoder-decoders generate whole greedy answers)."""
    asked = {
        "n": body.n != 1,
        "stop": bool(body.stop),
        "logprobs": body.logprob_count() is not None,
        "echo": getattr(body, "echo", False),
    }
    if why == "encoder-decoder":
        asked |= {
            "temperature": bool(body.temperature),
            "top_p": body.top_p not in (None, 1.0),
            "top_k": (body.top_k or 0) > 0,
            "stream": body.stream,
        }
    for name, given in asked.items():
        if given:
            raise ServeError(f"field '{name}' is not supported for {why} models; leave it out")


def error_body(status: int, message: str) -> dict:
    """OpenAI's error shape (a JSON response's body, or a stream's last event)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def outcome(seq) -> dict:
    """A finished sequence as one answer."""
    return {
        "text": seq.text,
        "prompt_tokens": len(seq.prompt),
        "completion_tokens": len(seq.tokens),
        "finish_reason": seq.finish_reason,
        "token_ids": list(seq.tokens),
        "logprobs": list(seq.logprobs),
    }


def usage(answers: list[dict], n: int) -> dict:
    """Prompt tokens once per prompt (not per choice), as OpenAI counts them."""
    prompt = sum(a.get("prompt_tokens", 0) for a in answers[::n])
    completion = sum(a.get("completion_tokens", 0) for a in answers)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def envelope(kind: str, model: str, choices: list, answers: list[dict], n: int) -> dict:
    return {
        "id": new_id(kind),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(answers, n),
    }


def new_id(kind: str) -> str:
    return f"{'cmpl' if kind.startswith('text') else 'chatcmpl'}-{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------- log-probabilities


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def completion_logprobs(tokenizer, ids: list[int], entries: list[dict], offset: int = 0):
    """OpenAI's completions form: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens = [token_text(tokenizer, t) for t in ids]
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{token_text(tokenizer, t): lp for t, lp in e["top"]} for e in entries],
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer, ids: list[int], entries: list[dict]) -> dict:
    """OpenAI's chat form: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def item(token_id: int, logprob: float) -> dict:
        text = token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {**item(t, e["logprob"]), "top_logprobs": [item(a, lp) for a, lp in e["top"]]}
            for t, e in zip(ids, entries, strict=True)
        ]
    }


# ---------------------------------------------------------------- whole answers


def completion_choices(tokenizer, body: schemas.Completion, prompts, answers) -> list[dict]:
    choices = []
    for index, answer in enumerate(answers):
        prefix = prompts[index // body.n] if body.echo else ""
        logprobs = None
        if answer.get("logprobs") is not None and body.logprobs is not None:
            logprobs = completion_logprobs(
                tokenizer, answer["token_ids"], answer["logprobs"], len(prefix)
            )
        choices.append(
            {
                "index": index,
                "text": prefix + answer["text"],
                "logprobs": logprobs,
                "finish_reason": answer["finish_reason"],
            }
        )
    return choices


def chat_choices(tokenizer, body: schemas.Chat, answers) -> list[dict]:
    choices = []
    for index, answer in enumerate(answers):
        logprobs = None
        if body.logprobs and answer.get("logprobs") is not None:
            logprobs = chat_logprobs(tokenizer, answer["token_ids"], answer["logprobs"])
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": answer["text"]},
                "logprobs": logprobs,
                "finish_reason": answer["finish_reason"],
            }
        )
    return choices


# ---------------------------------------------------------------- streaming


class Chunks:
    """Server-Sent Events for one streaming request: per choice, the text (and
    log-probabilities) that became visible since its last chunk."""

    def __init__(self, tokenizer, body: schemas.Generation, chat: bool, prompts: list[str]):
        self.tokenizer, self.body, self.chat = tokenizer, body, chat
        self.kind = "chat.completion.chunk" if chat else "text_completion"
        self.id, self.created = new_id(self.kind), int(time.time())
        count = len(prompts) * body.n
        self.sent = [""] * count  # text sent per choice
        self.scored = [0] * count  # tokens whose log-probabilities were sent
        self.prompts = prompts

    def event(self, payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def chunk(self, choices: list[dict], **extra) -> str:
        payload = {"id": self.id, "object": self.kind, "created": self.created}
        payload |= {"model": self.body.model, "choices": choices, **extra}
        return self.event(payload)

    def opening(self) -> list[str]:
        """Chat streams open with the assistant's role; echoed completions with the prompt."""
        if self.chat:
            return [
                self.chunk([self.choice(i, {"role": "assistant", "content": ""}, None)])
                for i in range(len(self.sent))
            ]
        if getattr(self.body, "echo", False):
            return [
                self.chunk([self.choice(i, self.prompts[i // self.body.n], None)])
                for i in range(len(self.sent))
            ]
        return []

    def choice(self, index: int, delta, finish_reason, logprobs=None) -> dict:
        if self.chat:
            if isinstance(delta, str):
                delta = {"content": delta} if delta or finish_reason is None else {}
            return {
                "index": index,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        return {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": finish_reason}

    def update(self, index: int, text: str, ids: list[int], entries: list[dict], finish):
        """The chunk for choice `index` at a step (None if nothing new is visible)."""
        sent = self.sent[index]
        delta = text[len(sent) :] if text.startswith(sent) else ""  # never take text back
        self.sent[index] = sent + delta
        logprobs = self.new_logprobs(index, ids, entries)
        if not delta and finish is None and logprobs is None:
            return None
        return self.chunk([self.choice(index, delta, finish, logprobs)])

    def new_logprobs(self, index: int, ids: list[int], entries: list[dict]):
        if self.body.logprob_count() is None or len(entries) <= self.scored[index]:
            return None
        start, self.scored[index] = self.scored[index], len(entries)
        new_ids, new = ids[start : len(entries)], entries[start:]
        if self.chat:
            return chat_logprobs(self.tokenizer, new_ids, new)
        return completion_logprobs(self.tokenizer, new_ids, new)

    def closing(self, answers: list[dict]) -> list[str]:
        events = []
        options = self.body.stream_options
        if options is not None and options.include_usage:
            events.append(self.chunk([], usage=usage(answers, self.body.n)))
        return [*events, "data: [DONE]\n\n"]

    def error(self, status: int, message: str) -> str:
        return self.event(error_body(status, message))
