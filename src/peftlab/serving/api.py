"""The HTTP face of `peftlab serve` (FastAPI): the OpenAI API convention for many adapters.

GET /v1/models lists the base model and every adapter; POST /v1/completions and
/v1/chat/completions pick the adapter by `model` (as vLLM and LoRAX do); POST
/v1/classify returns labels and probabilities from classification adapters. Admin
endpoints load and unload adapters behind a bearer token: peftlab's own
(/admin/adapters) and vLLM's (/v1/load_lora_adapter, /v1/unload_lora_adapter).

Every error, the framework's own 404/405 included, is OpenAI's JSON error shape, and the
request body is always read to its end (or the connection closed by uvicorn), so a pooled
connection stays usable after any refusal. Requests wait for the batcher without a
thread each; one whose client hangs up or whose deadline passes leaves the queue.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from peftlab.errors import PeftlabError
from peftlab.serving import completions, schemas
from peftlab.serving.batcher import Abandoned, Batcher, Job, QueueFull
from peftlab.serving.decoding import Sequence
from peftlab.serving.engine import Engine, ServeError, check_name
from peftlab.serving.metrics import CONTENT_TYPE

MAX_BODY_BYTES = 1 << 20
JSON_TYPES = ("application/json", "")  # "": a client that names no type sends JSON anyway
CLIENT_GONE = 499  # nginx's status for "the client closed the connection first"


@dataclass
class Limits:
    max_input_tokens: int = 8192
    max_new_tokens: int = 256
    timeout_s: float = 120.0


class ClientGone(Exception):
    pass


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(completions.error_body(status, message), status_code=status)


def build_app(engine: Engine, batcher: Batcher, limits: Limits, admin_token: str | None):
    app = FastAPI(title="peftlab serve", version="1", docs_url=None, redoc_url=None)
    service = Service(engine, batcher, limits, admin_token)
    add_error_handlers(app, batcher)
    app.add_middleware(CountRequests, metrics=batcher.metrics)
    add_routes(app, service)
    return app


def add_error_handlers(app: FastAPI, batcher: Batcher) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError):
        return error_response(exc.status, str(exc))

    @app.exception_handler(PeftlabError)
    async def refused(request: Request, exc: PeftlabError):  # e.g. an admin load's bad folder
        return error_response(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return error_response(404, f"no route {request.method} {request.url.path}")
        if exc.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        batcher.metrics.queue_full()
        return error_response(503, "server busy: the request queue is full; retry shortly")

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone):
        return Response(status_code=CLIENT_GONE)  # nobody reads it; the metrics count it

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):  # a bug must not take the server down
        return error_response(500, f"{type(exc).__name__}: {exc}")


class CountRequests:
    """ASGI middleware: every request's status and latency into the metrics, labelled by
    the served model it named ("-" for none or an unknown one: labels stay bounded).
    Pure ASGI rather than @app.middleware("http"), which would wrap the response stream
    and hide a client's disconnect from the endpoint."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            model = scope.get("state", {}).get("model", "-")
            seconds = time.perf_counter() - started
            self.metrics.request(model, getattr(route, "path", "other"), status[0], seconds)


async def read_body(request: Request) -> bytes:
    """The whole body, at most MAX_BODY_BYTES (413 beyond), sent as JSON (415 otherwise)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in JSON_TYPES:
        raise ServeError(
            f"the body must be JSON (Content-Type: application/json), not {kind!r}", 415
        )
    length = request.headers.get("content-length")
    if length is not None and int(length) > MAX_BODY_BYTES:  # h11 checked it is a number
        raise ServeError(f"request body over {MAX_BODY_BYTES} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ServeError(f"request body over {MAX_BODY_BYTES} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Service:
    """What the routes do, with the engine, the batcher and the limits they share."""

    def __init__(self, engine: Engine, batcher: Batcher, limits: Limits, admin_token):
        self.engine, self.batcher, self.limits = engine, batcher, limits
        self.admin_token = admin_token

    async def body(self, request: Request, model: type[schemas.Request]) -> schemas.Request:
        body = schemas.parse(model, await read_body(request))
        if getattr(body, "model", None) in self.model_ids():
            request.state.model = body.model
        return body

    async def wait(self, request: Request, jobs: list[Job]) -> list:
        """Submit the jobs and wait for their results; a client that hangs up or a
        deadline that passes cancels them (still-queued jobs are then dropped)."""
        futures = [self.batcher.submit(job) for job in jobs]
        gathered = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        gone = asyncio.ensure_future(disconnected(request))
        try:
            done, _ = await asyncio.wait(
                {gathered, gone}, timeout=self.limits.timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            gone.cancel()
        if gathered in done and not any(f.cancelled() for f in futures):
            return gathered.result()
        for job in jobs:
            job.abandon()
        gathered.cancel()
        # Its CancelledError is this method's own doing: read it, or asyncio logs "exception
        # was never retrieved" as an ERROR for every client that hung up.
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        if gone in done:
            raise ClientGone
        raise ServeError("the request timed out waiting for the model", 504)

    async def check_inputs(self, texts: list[str]) -> None:
        for text in texts:
            count = await run_in_threadpool(self.engine.count_tokens, text)
            if count > self.limits.max_input_tokens:
                raise ServeError(
                    f"input has {count} tokens; the limit is {self.limits.max_input_tokens}"
                )

    def deadline(self) -> float:
        return time.monotonic() + self.limits.timeout_s

    async def classify(self, request, model: str, texts: list[str]) -> list[dict]:
        self.engine.check(model, "classify")
        await self.check_inputs(texts)
        deadline = self.deadline()
        jobs = [Job("classify", model, text, deadline=deadline) for text in texts]
        return await self.wait(request, jobs)

    def max_tokens(self, body: schemas.Generation) -> int:
        slot = self.engine.slot(body.model)
        default = slot.package.config.task.max_new_tokens if slot else 16
        value = body.max_tokens or body.max_completion_tokens or default
        limit = self.limits.max_new_tokens
        if value > limit:
            raise ServeError(f"max_tokens {value} is out of range; use 1 to {limit}")
        return value

    def generation_jobs(self, body: schemas.Generation, texts: list[str]) -> list[Job]:
        """n jobs per text: decoded step by step (decoders), or whole (encoder-decoders)."""
        max_tokens, deadline = self.max_tokens(body), self.deadline()
        if not self.engine.continuous:
            completions.refuse_decoding_fields(body, "encoder-decoder")
            return [
                Job("generate", body.model, t, max_tokens=max_tokens, deadline=deadline)
                for t in texts
            ]
        samplings = completions.sampling_of(body, max_tokens)
        return [
            Job("generate", body.model, t, sequence=Sequence(body.model, [], s), deadline=deadline)
            for t in texts
            for s in samplings
        ]

    async def answers(self, request, body: schemas.Generation, texts: list[str]):
        """(jobs, answers): answers None for a stream, whose jobs are then submitted."""
        slot = self.engine.slot(body.model)
        if slot is not None and slot.kind == "classification":  # answers with its label
            completions.refuse_decoding_fields(body, "classification")
            results = await self.classify(request, body.model, texts)  # checks the inputs
            return None, [label_answer(r) for r in results]
        self.engine.check(body.model, "generate")
        await self.check_inputs(texts)
        jobs = self.generation_jobs(body, texts)
        if body.stream:
            return jobs, None
        results = await self.wait(request, jobs)
        answers = [r if isinstance(r, dict) else completions.outcome(r) for r in results]
        self.count_usage(body, answers)
        return jobs, answers

    def count_usage(self, body: schemas.Generation, answers: list[dict]) -> None:
        used = completions.usage(answers, body.n)
        self.batcher.metrics.usage(body.model, used["prompt_tokens"], used["completion_tokens"])

    async def respond(self, request, body, texts: list[str], chat: bool):
        jobs, answers = await self.answers(request, body, texts)
        tokenizer = self.engine.tokenizer
        if body.stream:
            chunks = completions.Chunks(tokenizer, body, chat, texts)
            events = self.stream(chunks, jobs) if answers is None else self.replay(chunks, answers)
            return StreamingResponse(events, media_type="text/event-stream")
        if chat:
            choices = completions.chat_choices(tokenizer, body, answers)
            return completions.envelope("chat.completion", body.model, choices, answers, body.n)
        choices = completions.completion_choices(tokenizer, body, texts, answers)
        return completions.envelope("text_completion", body.model, choices, answers, body.n)

    async def replay(self, chunks: completions.Chunks, answers: list[dict]):
        """A stream of answers that were whole at once (a classifier's labels)."""
        for event in chunks.opening():
            yield event
        for index, answer in enumerate(answers):
            yield chunks.update(index, answer["text"], [], [], answer["finish_reason"])
        for event in chunks.closing(answers):
            yield event

    def stream(self, chunks: completions.Chunks, jobs: list[Job]):
        """Each choice's new text as its sequence decodes; a client that hangs up (the
        response is cancelled) stops its sequences at the next step."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()

        def report(index: int):
            def on_step(seq) -> None:  # on the batcher's thread
                state = (index, seq.visible_text(), list(seq.tokens), list(seq.logprobs))
                loop.call_soon_threadsafe(updates.put_nowait, (*state, seq.finish_reason))

            return on_step

        for index, job in enumerate(jobs):
            job.sequence.on_step = report(index)
        futures = [self.batcher.submit(job) for job in jobs]
        for index, future in enumerate(futures):
            future.add_done_callback(
                lambda f, i=index: loop.call_soon_threadsafe(updates.put_nowait, (i, None))
            )
        return self.events(chunks, jobs, futures, updates)

    async def events(self, chunks, jobs, futures, updates):
        answers: dict[int, dict] = {}
        try:
            for event in chunks.opening():
                yield event
            while len(answers) < len(jobs):
                index, *state = await updates.get()
                if state[0] is None:  # its future settled: an error, or after its finish
                    future = futures[index]
                    if future.cancelled() or future.exception() is not None:
                        yield chunks.error(*failure(future))
                        return
                    continue
                event = chunks.update(index, *state)
                if event is not None:
                    yield event
                if state[-1] is not None:
                    answers[index] = completions.outcome(jobs[index].sequence)
            ordered = [answers[i] for i in range(len(jobs))]
            self.count_usage(chunks.body, ordered)
            for event in chunks.closing(ordered):
                yield event
        finally:
            for job in jobs:
                job.abandon()  # a no-op for the finished ones

    def authorize(self, request: Request) -> None:
        if not self.admin_token:
            raise ServeError("admin endpoints are off; start the server with --admin-token", 403)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.admin_token}".encode()):
            raise ServeError("admin endpoints need 'Authorization: Bearer <admin token>'", 401)

    async def admin(self, request: Request, action) -> object:
        (result,) = await self.wait(request, [Job("admin", action=action)])
        return result

    def model_ids(self) -> list[str]:
        return [row["id"] for row in self.engine.describe()]


def add_routes(app: FastAPI, service: Service) -> None:
    add_generation_routes(app, service)
    add_info_routes(app, service)
    add_admin_routes(app, service)


def add_generation_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/completions")
    async def completions_route(request: Request):
        body = await service.body(request, schemas.Completion)
        if body.echo and body.logprobs is not None:
            raise ServeError("'echo' with 'logprobs' is not supported; ask for one of them")
        texts = schemas.texts_of(body.prompt, "prompt")
        return await service.respond(request, body, texts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await service.body(request, schemas.Chat)
        text = schemas.last_user_message(body.messages)
        return await service.respond(request, body, [text], chat=True)

    @app.post("/v1/classify")
    async def classify(request: Request):
        body = await service.body(request, schemas.Classify)
        texts = schemas.texts_of(body.input, "input")
        results = await service.classify(request, body.model, texts)
        data = [{"index": i, **r} for i, r in enumerate(results)]
        return {"object": "list", "model": body.model, "data": data}


def add_info_routes(app: FastAPI, service: Service) -> None:
    @app.get("/v1/models")
    async def models():
        created = int(service.batcher.metrics.started)
        data = [
            {"object": "model", "created": created, "owned_by": "peftlab", **row}
            for row in service.engine.describe()
        ]
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": service.model_ids()}

    @app.get("/metrics")
    async def metrics():
        return Response(service.batcher.metrics.text(), media_type=CONTENT_TYPE)


def add_admin_routes(app: FastAPI, service: Service) -> None:
    engine = service.engine

    async def load(request: Request, name: str, path: str) -> list[str]:
        check_name(name)
        await service.admin(request, lambda: engine.load(name, path))
        return service.model_ids()

    async def unload(request: Request, name: str) -> list[str]:
        await service.admin(request, lambda: engine.unload(name))
        return service.model_ids()

    @app.post("/admin/adapters", status_code=201)
    async def admin_load(request: Request):
        service.authorize(request)
        body = await service.body(request, schemas.AdapterLoad)
        return {"loaded": body.name, "models": await load(request, body.name, body.path)}

    @app.delete("/admin/adapters/{name}")
    async def admin_unload(request: Request, name: str):
        service.authorize(request)
        return {"unloaded": name, "models": await unload(request, name)}

    @app.post("/v1/load_lora_adapter")
    async def vllm_load(request: Request):
        service.authorize(request)
        body = await service.body(request, schemas.VllmAdapterLoad)
        models = await load(request, body.lora_name, body.lora_path)
        return {"message": f"adapter '{body.lora_name}' loaded", "models": models}

    @app.post("/v1/unload_lora_adapter")
    async def vllm_unload(request: Request):
        service.authorize(request)
        body = await service.body(request, schemas.VllmAdapterUnload)
        models = await unload(request, body.lora_name)
        return {"message": f"adapter '{body.lora_name}' unloaded", "models": models}


def label_answer(result: dict) -> dict:
    """A classifier's answer to a completion: its label, as text."""
    return {
        "text": result["label"],
        "prompt_tokens": 0,
        "completion_tokens": 1,
        "finish_reason": "stop",
        "probabilities": result["probabilities"],
    }


def failure(future) -> tuple[int, str]:
    """(status, message) for a stream whose job failed or was given up."""
    error = None if future.cancelled() else future.exception()
    if error is None or isinstance(error, Abandoned):
        return 504, "the request ran past its deadline"
    if isinstance(error, ServeError):
        return error.status, str(error)
    return 500, f"{type(error).__name__}: {error}"
