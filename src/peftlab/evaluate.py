"""Batched, no-grad evaluation with timing and memory accounting."""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

from peftlab.resources import Meter


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Longest first: little padding, and an out-of-memory shows up on the first batch."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def evaluate(
    model,
    task,
    items,
    batch_size: int,
    precision: str = "fp32",
    device: torch.device | None = None,
    desc: str = "eval",
) -> dict:
    device = device or next(model.parameters()).device
    batches = length_sorted_batches([len(it.input_ids) for it in items], batch_size)
    was_training = model.training
    model.eval()
    all_logits = torch.empty(len(items), len(task.label_names))
    labels = torch.tensor([it.label for it in items])
    with Meter() as meter, torch.inference_mode(), autocast(precision, device):
        for indices in tqdm(batches, desc=desc, leave=False, disable=None):
            batch = {k: v.to(device) for k, v in task.collate([items[i] for i in indices]).items()}
            all_logits[indices] = task.logits(model, batch).cpu()
    model.train(was_training)
    metrics = task.score(all_logits, labels)
    metrics.update(
        runtime_s=round(meter.seconds, 3),
        samples=len(items),
        samples_per_s=round(len(items) / meter.seconds, 3),
        steps_per_s=round(len(batches) / meter.seconds, 3),
        peak_memory_mb=round(meter.peak_memory_mb, 1),
    )
    if meter.cuda_peak_memory_mb is not None:
        metrics["cuda_peak_memory_mb"] = round(meter.cuda_peak_memory_mb, 1)
    return metrics
