"""The HTTP face of `peftlab serve`: the OpenAI API convention for multi-adapter serving.

GET /v1/models lists the base model and every adapter; POST /v1/completions and
/v1/chat/completions pick the adapter by `model` (as vLLM and LoRAX do); POST
/v1/classify returns labels and probabilities from classification adapters. Admin
endpoints load and unload adapters (bearer token). Every bad request gets a 4xx JSON
error in OpenAI's shape and the server carries on.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import threading
import time
import uuid
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from peftlab.serving.batcher import Batcher, Job, QueueFull
from peftlab.serving.engine import Engine, ServeError, check_name

MAX_BODY_BYTES = 1 << 20
MAX_INPUTS = 64  # texts in one request


class Limits:
    def __init__(self, max_input_tokens=8192, max_new_tokens=256, timeout_s=120.0):
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog: socketserver's 5 resets bursts of clients

    def __init__(self, address, engine: Engine, batcher: Batcher, limits: Limits, admin_token):
        super().__init__(address, Handler)
        self.engine, self.batcher, self.limits = engine, batcher, limits
        self.admin_token = admin_token
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def server_close(self):
        """Also end idle keep-alive connections, so no handler thread outlives the server."""
        super().server_close()
        with self.connections_lock:
            open_connections = list(self.connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def field(body: dict, name: str, types, required=True, default=None):
    if name not in body or body[name] is None:
        if required:
            raise ServeError(f"missing required field '{name}'")
        return default
    value = body[name]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise ServeError(f"field '{name}' has the wrong type ({type(value).__name__})")
    return value


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def texts_of(value, name: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ServeError(f"field '{name}' must be a string or a list of strings")
    if not texts or len(texts) > MAX_INPUTS:
        raise ServeError(f"field '{name}' must hold 1 to {MAX_INPUTS} inputs")
    for text in texts:
        if not text.strip():
            raise ServeError(f"field '{name}' holds an empty input")
    return texts


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle keep-alive connection is kept

    def log_message(self, format, *args):  # one quiet line per request is enough
        pass

    # ------------------------------------------------------------ plumbing

    def reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status: int, message: str) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self.reply(status, {"error": {"message": message, "type": kind, "code": status}})

    def body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ServeError("a JSON body with a Content-Length header is required", 411)
        if int(length) > MAX_BODY_BYTES:
            raise ServeError(f"request body over {MAX_BODY_BYTES} bytes", 413)
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ServeError(f"malformed JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ServeError("the JSON body must be an object")
        return body

    def handle_errors(self, route) -> None:
        try:
            route()
        except ServeError as exc:
            self.error(exc.status, str(exc))
        except QueueFull:
            self.server.batcher.metrics.queue_full()
            self.error(503, "server busy: the request queue is full; retry shortly")
        except FutureTimeout:
            self.error(504, "the request timed out waiting for the model")
        except Exception as exc:  # a bug must not take the server down
            self.error(500, f"{type(exc).__name__}: {exc}")

    def do_GET(self):
        routes = {"/health": self.health, "/metrics": self.metrics, "/v1/models": self.models}
        route = routes.get(self.path.split("?")[0].rstrip("/"))
        self.handle_errors(route or self.not_found)

    def do_POST(self):
        routes = {
            "/v1/completions": self.completions,
            "/v1/chat/completions": self.chat,
            "/v1/classify": self.classify,
            "/admin/adapters": self.admin_load,
        }
        self.handle_errors(routes.get(self.path.rstrip("/"), self.not_found))

    def do_DELETE(self):
        prefix = "/admin/adapters/"
        if self.path.startswith(prefix):
            name = self.path[len(prefix) :]
            self.handle_errors(lambda: self.admin_unload(name))
        else:
            self.handle_errors(self.not_found)

    def not_found(self):
        raise ServeError(f"no route {self.command} {self.path}", 404)

    # ------------------------------------------------------------ work

    def run_jobs(self, kind: str, model: str, texts: list[str], max_tokens: int = 0) -> list:
        engine, limits = self.server.engine, self.server.limits
        engine.check(model, kind)
        for text in texts:
            count = engine.count_tokens(text)
            if count > limits.max_input_tokens:
                raise ServeError(
                    f"input has {count} tokens; the limit is {limits.max_input_tokens}"
                )
        started = time.perf_counter()
        futures = [self.server.batcher.submit(Job(kind, model, text, max_tokens)) for text in texts]
        ok = False
        try:
            results = [f.result(timeout=limits.timeout_s) for f in futures]
            ok = True
            return results
        finally:
            self.server.batcher.metrics.request(model, time.perf_counter() - started, ok)

    def generation_body(self) -> tuple[dict, str]:
        body = self.body()
        if body.get("stream"):
            raise ServeError("stream=true is not supported; ask without streaming")
        return body, field(body, "model", str)

    def max_tokens(self, body: dict, model: str) -> int:
        slot = self.server.engine.slot(model)
        default = slot.package.config.task.max_new_tokens if slot else 16
        value = field(body, "max_tokens", int, required=False, default=None)
        if value is None:
            value = field(body, "max_completion_tokens", int, required=False, default=default)
        limit = self.server.limits.max_new_tokens
        if not 1 <= value <= limit:
            raise ServeError(f"max_tokens {value} is out of range; use 1 to {limit}")
        return value

    def answer(self, model: str, texts: list[str], max_tokens: int) -> list[dict]:
        """Completions for generation models; the label, as text, for classifiers."""
        slot = self.server.engine.slot(model)
        if slot is not None and slot.kind == "classification":
            results = self.run_jobs("classify", model, texts)
            return [
                {
                    "text": r["label"],
                    "prompt_tokens": 0,
                    "completion_tokens": 1,
                    "finish_reason": "stop",
                    "probabilities": r["probabilities"],
                }
                for r in results
            ]
        return self.run_jobs("generate", model, texts, max_tokens)

    def completions(self):
        body, model = self.generation_body()
        texts = texts_of(body.get("prompt"), "prompt")
        results = self.answer(model, texts, self.max_tokens(body, model))
        choices = [
            {"index": i, "text": r["text"], "logprobs": None, "finish_reason": r["finish_reason"]}
            for i, r in enumerate(results)
        ]
        self.reply(200, envelope("text_completion", model, choices, results))

    def chat(self):
        body, model = self.generation_body()
        messages = field(body, "messages", list)
        text = last_user_message(messages)
        results = self.answer(model, [text], self.max_tokens(body, model))
        choices = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": results[0]["text"]},
                "finish_reason": results[0]["finish_reason"],
            }
        ]
        self.reply(200, envelope("chat.completion", model, choices, results))

    def classify(self):
        body = self.body()
        model = field(body, "model", str)
        texts = texts_of(body.get("input"), "input")
        results = self.run_jobs("classify", model, texts)
        data = [{"index": i, **r} for i, r in enumerate(results)]
        self.reply(200, {"object": "list", "model": model, "data": data})

    def models(self):
        created = int(self.server.batcher.metrics.started)
        data = [
            {"object": "model", "created": created, "owned_by": "peftlab", **row}
            for row in self.server.engine.describe()
        ]
        self.reply(200, {"object": "list", "data": data})

    def health(self):
        models = [row["id"] for row in self.server.engine.describe()]
        self.reply(200, {"status": "ok", "models": models})

    def metrics(self):
        self.reply(200, self.server.batcher.metrics.snapshot())

    # ------------------------------------------------------------ admin

    def authorize(self) -> None:
        token = self.server.admin_token
        if not token:
            raise ServeError("admin endpoints are off; start the server with --admin-token", 403)
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ServeError("admin endpoints need 'Authorization: Bearer <admin token>'", 401)

    def admin(self, action) -> object:
        job = Job("admin", action=action)
        return self.server.batcher.submit(job).result(timeout=self.server.limits.timeout_s)

    def admin_load(self):
        self.authorize()
        body = self.body()
        name = check_name(field(body, "name", str))
        path = field(body, "path", str)
        engine = self.server.engine
        self.admin(lambda: engine.load(name, path))
        self.reply(201, {"loaded": name, "models": [row["id"] for row in engine.describe()]})

    def admin_unload(self, name: str):
        self.authorize()
        engine = self.server.engine
        self.admin(lambda: engine.unload(name))
        self.reply(200, {"unloaded": name, "models": [row["id"] for row in engine.describe()]})


def last_user_message(messages: list) -> str:
    for message in reversed(messages):
        if not isinstance(message, dict):
            raise ServeError("field 'messages' must be a list of {role, content} objects")
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text"
                )
            if not isinstance(content, str) or not content.strip():
                raise ServeError("the last user message has no text content")
            return content
    raise ServeError("field 'messages' has no user message")


def envelope(kind: str, model: str, choices: list, results: list[dict]) -> dict:
    prompt = sum(r.get("prompt_tokens", 0) for r in results)
    completion = sum(r.get("completion_tokens", 0) for r in results)
    return {
        "id": f"{'cmpl' if kind == 'text_completion' else 'chatcmpl'}-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
