"""Concurrent requests -> batches for one worker thread, with a bounded queue.

HTTP threads submit jobs and wait on their futures; the worker takes the first waiting
job, gathers whatever else arrives within `max_wait_s` (up to `max_batch`), and runs
classification and generation jobs as one batch each, whatever adapters they name.
Admin actions (load/unload) go through the same queue and run alone, between batches,
so a batch never sees its adapters change. A full queue refuses at once (HTTP 503)
rather than growing without limit. A job whose request gave up (client gone, deadline
passed) cancels its future and is dropped when its batch is gathered: only work someone
still waits for is computed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from peftlab.serving.metrics import Metrics


@dataclass
class Job:
    kind: str  # "classify" | "generate" | "admin"
    model: str = ""
    text: str = ""
    max_tokens: int = 0
    action: Callable | None = None  # admin jobs
    deadline: float = float("inf")  # time.monotonic() after which nobody waits for it
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)

    def take(self) -> bool:
        """Claim the job for a batch; False if its request gave up (cancelled or late)."""
        if time.monotonic() > self.deadline:
            self.future.cancel()
        return self.future.set_running_or_notify_cancel()


class QueueFull(Exception):
    pass


class Batcher:
    def __init__(self, engine, max_batch=16, max_wait_s=0.01, queue_size=256, metrics=None):
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth.set_function(self.jobs.qsize)
        self.thread = threading.Thread(target=self.loop, name="peftlab-batcher", daemon=True)
        self.held: Job | None = None  # an admin job that ended the last gathering
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
        while not self.stopping:
            batch = self.gather()
            if batch is None:
                return
            if batch and batch[0].kind == "admin":
                run_admin(batch[0])
                continue
            for kind in ("classify", "generate"):
                jobs = [j for j in batch if j.kind == kind]
                if jobs:
                    self.run(kind, jobs)

    def gather(self) -> list[Job] | None:
        first = self.held or self.jobs.get()
        self.held = None
        if first is None:
            return None
        if first.kind == "admin":
            return [first]
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None:
                self.stopping = True  # after this batch
                break
            if job.kind == "admin":
                self.held = job  # runs right after this batch, in arrival order
                break
            batch.append(job)
        return batch

    def run(self, kind: str, jobs: list[Job]) -> None:
        started = time.perf_counter()
        taken = [job for job in jobs if job.take()]
        self.metrics.dropped.inc(len(jobs) - len(taken))
        jobs = [job for job in taken if self.still_served(job)]
        if not jobs:
            return
        names = [j.model for j in jobs]
        texts = [j.text for j in jobs]
        try:
            if kind == "classify":
                results = self.engine.classify(names, texts)
            else:
                results = self.engine.generate(names, texts, [j.max_tokens for j in jobs])
        except Exception as exc:  # answer every waiting request, keep serving
            for job in jobs:
                job.future.set_exception(exc)
            self.metrics.batch(len(jobs), time.perf_counter() - started)
            return
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)
        self.metrics.batch(len(jobs), time.perf_counter() - started)

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
