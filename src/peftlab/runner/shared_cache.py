"""What the runs of one comparison share, kept on disk so that each run can be its own
process: the split dataset, its encoding, and the base model's test evaluation.

Each entry sits under a content key (the settings it depends on), so a run with other
data, model or evaluation settings never picks up another's. The first process to need
an entry computes it under a file lock; the others wait and read it. JSON only: nothing
here is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from peftlab.fsutil import content_key, locked, write_json_atomic


def data_key(cfg) -> str:
    """Splits and encoding depend on the model (its tokenizer), the data and the task."""
    return content_key({"model": cfg.model, "data": cfg.data, "task": cfg.task})


def before_key(cfg, quantized: bool) -> str:
    """The base evaluation also depends on how it is computed, and on a quantized base.
    Not on the seed: like the runs in one process before, every seed shares it."""
    train = cfg.train
    extra = {"precision": train.precision, "batch": train.eval_batch_size}
    if quantized:
        extra["quant_bits"] = cfg.method.quant_bits
    return content_key({"data": data_key(cfg), **extra})


def cached_json(folder: Path | None, name: str, compute: Callable[[], dict]) -> dict:
    """folder/name.json, computed once across processes; without a folder, compute."""
    if folder is None:
        return compute()
    path = Path(folder) / f"{name}.json"
    with locked(path):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        value = compute()
        write_json_atomic(path, value)
        return value


def dump_task_data(dataset, items: dict) -> dict:
    return {
        "dataset": dataclasses.asdict(dataset),
        "items": {split: [dataclasses.asdict(it) for it in rows] for split, rows in items.items()},
    }


def load_task_data(entry: dict, item_type) -> tuple:
    from peftlab.data.sources import Example, TaskData

    fields = dict(entry["dataset"])
    fields["splits"] = {k: [Example(**e) for e in v] for k, v in fields["splits"].items()}
    if fields.get("columns") is not None:
        fields["columns"] = tuple(fields["columns"])
    items = {k: [item_type(**it) for it in v] for k, v in entry["items"].items()}
    return TaskData(**fields), items
