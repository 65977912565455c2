"""How much arithmetic a run's training did, and how close to this machine's peak it ran.

The FLOPs are torch's own count (`torch.utils.flop_counter.FlopCounterMode`) of one real
training batch, forward and backward, as the method trains it (its frozen layers, its
precision), taken per example and scaled by the examples the run trained on. The peak is
this machine's dense matmul rate in the dtype and thread count the run used: measured
by every run (well under a second; at most once a minute in one process), the highest
kept under PEFTLAB_HOME with the CPU's identity, so a changed CPU is measured anew and a
busy moment does not lower it.
MFU = achieved FLOP/s / peak FLOP/s.
"""

from __future__ import annotations

import contextlib
import json
import math
import time

import torch

from peftlab.data.assets import peftlab_home
from peftlab.fsutil import write_json_atomic
from peftlab.training import precision as precisions
from peftlab.training.precision import autocast, cpu_flags, cpu_name

# The flags that decide a CPU's matmul speed: what a peak is kept under, with its name.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
PEAK_SIZE = 1024  # square matmul: large enough to reach the kernel's steady rate
# bf16 emulated on a CPU without it (AVX2 EPYC: ~0.7 GFLOP/s) reaches its rate at 256
# already, where 1024 took 1-3.5 s a matmul, seconds of every forced-bf16 run.
EMULATED_PEAK_SIZE = 256


def count_flops(model, task, batch: dict, precision: str, device, feeding=None) -> int:
    """FLOPs of one forward and backward pass over `batch`, counted by torch. In eval mode
    (dropout draws no random numbers, so training goes on exactly as without the count);
    the gradients it leaves are cleared."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            with feeding or contextlib.nullcontext(), autocast(precision, device):
                loss = task.loss(model, batch)
            loss.backward()  # outside autocast, as the training step runs it
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return int(counter.get_total_flops())


def machine() -> dict:
    """What this machine's peak depends on: its processor and the flags that set its
    matmul speed (or the GPU's name)."""
    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "flags": []}
    return {"device": cpu_name(), "flags": sorted(cpu_flags() & set(SPEED_FLAGS))}


# A process measures a key at most once a minute: a notebook, the API or a test process
# running many short runs would otherwise spend 0.1-0.25 s of each on matmuls that only
# repeat what it found a moment ago (the kept peak still rises with a later process).
REMEASURE_AFTER_S = 60.0
_measured_at: dict[tuple, float] = {}


def peak_flops(precision: str, threads: int, device) -> float:
    """This machine's matmul FLOP/s in the run's dtype and thread count: the highest ever
    measured here. Each run measures again (a fraction of a second; a process at most once a
    minute, REMEASURE_AFTER_S) and keeps the higher rate, so a peak first taken on a busy
    machine (seen: 60 GFLOP/s kept for an AVX2 CPU that does 150 idle, and an MFU over 100%)
    rises as soon as a run finds it idle."""
    path = peftlab_home() / "peak_flops.json"
    key = json.dumps({**machine(), "precision": precision, "threads": threads}, sort_keys=True)
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    here = (str(path), key)  # this process's last measurement of this peak
    if key in kept and time.monotonic() - _measured_at.get(here, -math.inf) < REMEASURE_AFTER_S:
        return kept[key]
    measured = measure_peak(precision, threads, device, repeats=5 if key not in kept else 2)
    _measured_at[here] = time.monotonic()
    if measured > kept.get(key, 0.0):
        kept[key] = measured
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, kept)
    return kept[key]


def peak_size(precision: str, device) -> int:
    emulated = device.type == "cpu" and not precisions.native_bf16()
    return EMULATED_PEAK_SIZE if precision == "bf16" and emulated else PEAK_SIZE


def measure_peak(precision: str, threads: int, device, repeats: int = 5) -> float:
    """Best of `repeats` square matmuls after a warm-up: 2 n^3 FLOPs each."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = peak_size(precision, device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = float("inf")
        for _ in range(repeats + 1):  # the first warms the kernel up
            started = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best


def utilization(flops_per_sample: float, samples: int, seconds: float, peak: float) -> dict:
    """The run's training cost and its model FLOP utilization, as run.json keeps them."""
    total = flops_per_sample * samples
    achieved = total / max(seconds, 1e-9)
    return {
        "train_flops": int(total),
        "flops_per_sample": int(flops_per_sample),
        "achieved_flops_per_s": round(achieved),
        "peak_flops_per_s": round(peak),
        "mfu": round(achieved / peak, 4) if peak else None,
    }
