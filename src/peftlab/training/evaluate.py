"""Batched, no-grad evaluation with timing and memory accounting.

Tasks score themselves (`task.measure`); this module gives them batches that never fail
for size: longest first, so an out-of-memory shows up on the first batch, and a batch
that does not fit is split in halves and retried instead of ending a long run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from peftlab.models.loading import cpu_attention
from peftlab.training import distributed, threads
from peftlab.training.compiled import compiled_logits
from peftlab.training.precision import autocast
from peftlab.training.resources import Meter


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Longest first: little padding, and an out-of-memory shows up on the first batch."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def map_batches(
    items: list,
    lengths: list[int],
    batch_size: int,
    fn: Callable[[list], list],
    desc: str = "eval",
) -> list:
    """fn(list of items) -> one result per item, for every item, in the items' order.

    A batch that runs out of memory is halved and retried (down to one item, which then
    fails for real); the smaller size is kept for the remaining batches. Under torchrun
    each process runs every n-th batch and all of them get every result: the batches and
    so the numbers are the same as in one process, in a share of the time. Between batches
    the thread count follows the cores other processes leave free (threads.CoreShare).
    """
    results: list = [None] * len(items)
    pending = length_sorted_batches(lengths, batch_size)
    processes = distributed.num_processes()
    pending = pending[distributed.rank() :: processes]
    mine = [i for batch in pending for i in batch]
    # Rank 0 alone shows a bar (of its share).
    bar = tqdm(
        total=len(mine), desc=desc, leave=False, disable=None if distributed.is_main() else True
    )
    with threads.core_share() as share:
        run_batches(items, fn, pending, results, bar, share, desc)
    bar.close()
    if processes > 1:
        for part in distributed.gather_object([(i, results[i]) for i in mine]):
            for i, output in part:
                results[i] = output
    return results


def run_batches(items, fn, pending, results, bar, share, desc) -> None:
    """Fill results[i] for every index in the pending batches, halving on out-of-memory."""
    while pending:
        share.check()
        indices = pending.pop(0)
        try:
            outputs = fn([items[i] for i in indices])
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc) or len(indices) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(indices) // 2
            rest = [i for batch in pending for i in batch]
            pending = [indices[:half], indices[half:]]
            pending += [rest[i : i + half] for i in range(0, len(rest), half)]
            print(f"note: {desc}: a batch of {len(indices)} did not fit; using {half}", flush=True)
            continue
        for i, output in zip(indices, outputs, strict=True):
            results[i] = output
        bar.update(len(indices))


def evaluate(
    model,
    task,
    items,
    batch_size: int,
    precision: str = "fp32",
    device: torch.device | None = None,
    desc: str = "eval",
    generate: bool = True,
    compile: bool = False,
) -> dict:
    """The task's metrics on `items`, plus runtime, throughput and peak memory.

    generate=False skips text generation (validation during training: loss only).
    compile=True: a classification model's logits compiled ahead of time where that
    applies (training/compiled.py); the runtime includes compiling or loading it.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    longest = max((len(it.input_ids) for it in items), default=0)
    with (
        Meter() as meter,
        torch.inference_mode(),
        autocast(precision, device),
        cpu_attention(model, longest),
    ):
        compiled = compiled_logits(model, task, len(items), precision, device) if compile else None
        extra = {"logits_fn": compiled} if compiled is not None else {}
        metrics = task.measure(model, items, batch_size, device, desc, generate, **extra)
    model.train(was_training)
    batches = -(-len(items) // batch_size)
    metrics.update(
        runtime_s=round(meter.seconds, 3),
        samples=len(items),
        samples_per_s=round(len(items) / meter.seconds, 3),
        steps_per_s=round(batches / meter.seconds, 3),
        peak_memory_mb=round(meter.peak_memory_mb, 1),
    )
    if compiled is not None:
        metrics["compiled"] = True
    if meter.cuda_peak_memory_mb is not None:
        metrics["cuda_peak_memory_mb"] = round(meter.cuda_peak_memory_mb, 1)
    return metrics
