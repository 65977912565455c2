"""Concurrent requests -> forward passes on one worker thread, with a bounded queue.

Request handlers submit jobs and await their futures. The worker loops: it takes what
has arrived (waiting up to `max_wait_s` for company when idle), answers classification
jobs in one pass each round, admits generation jobs into the running batch as far as
`max_batch` allows (continuous batching, decoding.py), and runs one decoding step for
every running sequence. A short generation therefore leaves as soon as it is done, and a
new one joins at the next step instead of waiting for the batch to drain.

Admin actions (load/unload) run alone once no sequence is running, and nothing behind
them starts before, so a request never sees its adapter change. A full queue refuses at
once (HTTP 503) rather than growing. A job whose request gave up (client gone, deadline
passed) is dropped before it starts, or leaves the running batch at the next step.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from peftlab.serving.decoding import Decoder, Sequence
from peftlab.serving.metrics import Metrics


@dataclass
class Job:
    kind: str  # "classify" | "generate" | "admin"
    model: str = ""
    text: str = ""  # classify; seq2seq generation
    sequence: Sequence | None = None  # generate on a decoder: prompt and sampling
    max_tokens: int = 0  # seq2seq generation
    action: Callable | None = None  # admin jobs
    deadline: float = float("inf")  # time.monotonic() after which nobody waits for it
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)

    def take(self) -> bool:
        """Claim the job to run it; False if its request gave up (cancelled or late)."""
        if time.monotonic() > self.deadline:
            self.future.cancel()
        return self.future.set_running_or_notify_cancel()

    def abandon(self) -> None:
        """The request side gave up: cancel a waiting job, stop a running sequence."""
        self.future.cancel()
        if self.sequence is not None:
            self.sequence.abandoned = True


class QueueFull(Exception):
    pass


class Abandoned(Exception):
    """A generation stopped because its request went away."""


class Batcher:
    def __init__(
        self, engine, max_batch=16, max_wait_s=0.01, queue_size=256, metrics=None, continuous=True
    ):
        self.engine = engine
        self.continuous = continuous  # False: whole requests per batch (the benchmark's foil)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth.set_function(self.jobs.qsize)
        self.thread = threading.Thread(target=self.loop, name="peftlab-batcher", daemon=True)
        self.pending: deque[Job] = deque()  # taken from the queue, not started yet
        self.running: dict[int, Job] = {}  # id(sequence) -> its job
        self.decoder = Decoder(engine, max_batch) if engine is not None else None
        self.stopping = False

    def start(self) -> Batcher:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> Future:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    # ------------------------------------------------------------ worker

    def loop(self) -> None:
        while not (self.stopping and not self.pending and not self.running):
            self.collect()
            classify, generate, admin = self.next_work()
            if classify:
                self.timed(self.classify, classify)
            if generate:
                self.timed(self.admit, generate)
            if self.running:
                self.timed(self.step)
            if admin is not None:
                run_admin(admin)

    def collect(self) -> None:
        """Move arrived jobs into `pending`; when idle, wait for one and its company."""
        idle = not self.pending and not self.running
        if idle:
            first = self.jobs.get()
            if not self.accept(first):
                return
            deadline = time.perf_counter() + self.max_wait_s
            while len(self.pending) < self.max_batch and time.perf_counter() < deadline:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if not self.accept(job):
                    return
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if not self.accept(job):
                return

    def accept(self, job: Job | None) -> bool:
        if job is None:
            self.stopping = True  # finish what is pending and running, then end
            return False
        self.pending.append(job)
        return True

    def next_work(self) -> tuple[list[Job], list[Job], Job | None]:
        """From `pending`, in arrival order: the classification jobs of this round, the
        generation jobs there is room for, or an admin action once nothing runs."""
        classify, generate = [], []
        room = self.decoder.room if self.decoder and self.continuous else self.max_batch
        while self.pending:
            job = self.pending[0]
            if job.kind == "admin":
                if self.running or classify or generate:
                    break  # it waits for everything before it to finish
                self.pending.popleft()
                return [], [], job
            if job.kind == "classify":
                if len(classify) >= self.max_batch:
                    break
                classify.append(self.pending.popleft())
            elif job.sequence is None or len(generate) < room:
                generate.append(self.pending.popleft())
            else:
                break
        return self.startable(classify), self.startable(generate), None

    def startable(self, jobs: list[Job]) -> list[Job]:
        taken = [job for job in jobs if job.take()]
        self.metrics.dropped.inc(len(jobs) - len(taken))
        return [job for job in taken if self.still_served(job)]

    def timed(self, work, *args) -> None:
        started = time.perf_counter()
        size = work(*args)
        self.metrics.batch(size, time.perf_counter() - started)

    def classify(self, jobs: list[Job]) -> int:
        try:
            results = self.engine.classify([j.model for j in jobs], [j.text for j in jobs])
        except Exception as exc:  # answer every waiting request, keep serving
            for job in jobs:
                job.future.set_exception(exc)
            return len(jobs)
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)
        return len(jobs)

    def admit(self, jobs: list[Job]) -> int:
        whole = [j for j in jobs if j.sequence is None or not self.continuous]
        if whole:  # encoder-decoders: whole requests
            self.generate_whole(whole)
        fresh = [j for j in jobs if j.sequence is not None and self.continuous]
        if fresh:
            for job in fresh:  # tokenized here: the worker's tokenizer is not shared
                job.sequence.prompt = self.engine.prompt_ids(job.model, job.text)
                self.running[id(job.sequence)] = job
            self.decoded(lambda: self.decoder.add([j.sequence for j in fresh]))
        return len(jobs)

    def step(self) -> int:
        now = time.monotonic()
        for job in self.running.values():
            if now > job.deadline:
                job.sequence.abandoned = True
        size = self.decoder.running
        self.decoded(self.decoder.step)
        return size

    def decoded(self, work) -> None:
        """Run a decoder call; settle the jobs of the sequences it finished."""
        try:
            finished = work()
        except Exception as exc:  # a failed pass fails the running requests, not the server
            for job in self.running.values():
                job.future.set_exception(exc)
            self.running.clear()
            self.decoder.lanes.clear()
            return
        for seq in finished:
            job = self.running.pop(id(seq))
            if seq.finish_reason == "abandoned":
                self.metrics.dropped.inc()
                job.future.set_exception(Abandoned())
            else:
                job.future.set_result(seq)

    def generate_whole(self, jobs: list[Job]) -> None:
        try:
            limits = [j.max_tokens or j.sequence.sampling.max_tokens for j in jobs]
            results = self.engine.generate([j.model for j in jobs], [j.text for j in jobs], limits)
        except Exception as exc:
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)

    def still_served(self, job: Job) -> bool:
        """An adapter unloaded while its request waited: 404 for that request alone."""
        try:
            self.engine.check(job.model, job.kind)
        except Exception as exc:
            job.future.set_exception(exc)
            return False
        return True


def run_admin(job: Job) -> None:
    if not job.take():
        return
    try:
        job.future.set_result(job.action())
    except Exception as exc:
        job.future.set_exception(exc)
