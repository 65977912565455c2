"""Counters for GET /metrics: requests, errors, latency, batch sizes, per adapter."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, defaultdict, deque

WINDOW = 2000  # latencies kept per model for the percentiles


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.requests: Counter = Counter()
        self.errors: Counter = Counter()
        self.latency: dict[str, deque] = defaultdict(lambda: deque(maxlen=WINDOW))
        self.batch_sizes: Counter = Counter()
        self.batch_seconds = 0.0
        self.batches = 0
        self.rejected_full = 0

    def request(self, model: str, seconds: float, ok: bool) -> None:
        with self.lock:
            self.requests[model] += 1
            if not ok:
                self.errors[model] += 1
            self.latency[model].append(seconds)

    def batch(self, size: int, seconds: float) -> None:
        with self.lock:
            self.batches += 1
            self.batch_sizes[size] += 1
            self.batch_seconds += seconds

    def queue_full(self) -> None:
        with self.lock:
            self.rejected_full += 1

    def snapshot(self) -> dict:
        with self.lock:
            models = {}
            for model, count in self.requests.items():
                values = sorted(self.latency[model])
                models[model] = {
                    "requests": count,
                    "errors": self.errors[model],
                    "latency_ms": {
                        "mean": round(1000 * statistics.fmean(values), 2),
                        "p50": round(1000 * values[len(values) // 2], 2),
                        "p95": round(
                            1000 * values[min(len(values) - 1, int(len(values) * 0.95))], 2
                        ),
                    },
                }
            sizes = self.batch_sizes
            total = sum(size * n for size, n in sizes.items())
            return {
                "uptime_s": round(time.time() - self.started, 1),
                "models": models,
                "batches": {
                    "count": self.batches,
                    "mean_size": round(total / self.batches, 3) if self.batches else 0,
                    "sizes": {str(k): v for k, v in sorted(sizes.items())},
                    "busy_s": round(self.batch_seconds, 3),
                },
                "rejected_queue_full": self.rejected_full,
            }
