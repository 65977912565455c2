"""Wall time and peak memory of a phase (process RSS on CPU, allocator peak on CUDA)."""

from __future__ import annotations

import threading
import time

import psutil
import torch


class Meter:
    """Context manager: `with Meter() as m: ...` then m.seconds and m.peak_memory_mb."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.seconds = 0.0
        self.peak_memory_mb = 0.0
        self.cuda_peak_memory_mb: float | None = None
        self._process = psutil.Process()
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __enter__(self) -> Meter:
        self._peak = self._process.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_memory_mb = self._peak / 2**20
        if torch.cuda.is_available():
            self.cuda_peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20


def release_freed_memory() -> None:
    """Hand memory freed by earlier phases (model loading, the base evaluation) back to
    the OS, so the training phase's RSS peak is training's own. glibc keeps freed heap
    pages otherwise; elsewhere this does nothing."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
