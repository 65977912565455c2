"""GET /metrics in Prometheus' text format (prometheus_client), one registry per server.

Per model (adapter or base) and endpoint: requests by HTTP status, latency histogram,
prompt and completion tokens; requests in flight; for the batcher: batch sizes, batch time,
queue depth and requests refused because the queue was full.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 (re-export)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        self.started = time.time()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "peftlab_requests", "Requests answered", ["model", "endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "peftlab_request_seconds",
            "Time from a request's arrival to its answer",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "peftlab_tokens", "Tokens read and written", ["model", "kind"], registry=r
        )
        self.batch_size = Histogram(
            "peftlab_batch_size", "Requests per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "peftlab_batch_seconds", "Time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rejected = Counter(
            "peftlab_queue_full_rejections", "Requests refused: the queue was full", registry=r
        )
        self.dropped = Counter(
            "peftlab_dropped_jobs",
            "Queued jobs dropped before running: client gone or deadline passed",
            registry=r,
        )
        self.queue_depth = Gauge("peftlab_queue_depth", "Jobs waiting for a batch", registry=r)
        self.in_flight = Gauge(
            "peftlab_requests_in_flight", "Requests received and not yet answered", registry=r
        )

    def request(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        self.latency.labels(model, endpoint).observe(seconds)

    def usage(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def queue_full(self) -> None:
        self.rejected.inc()

    def mean_batch_size(self) -> float:
        """Requests per batch so far (the benchmark's figure)."""
        count = total = 0.0
        for metric in self.batch_size.collect():
            for sample in metric.samples:
                if sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
        return round(total / count, 3) if count else 0.0

    def text(self) -> bytes:
        return generate_latest(self.registry)
