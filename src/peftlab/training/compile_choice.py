"""Whether `--compile-training auto` compiles a run's layer blocks, and what compiling the
same blocks cost and saved the last time on this machine.

auto trains the first steps eagerly, then compiles the blocks for the rest of the run when
the time it expects to save there is more than the compile costs: the mean eager step of
those first steps, times the steps left, times the share of a step compiling saves,
against the compile's seconds. Both figures are the ones measured the last time these
blocks were compiled here (kept in inductor's cache folder, so they go when its cache
goes: the warm cache is what made the recorded compile cheap); before any, SmolLM2 +
LoRA's on the AMX Xeon: the first compile of a run ~36 s cold (33-111 s in
bench/compiled_training.py), a compiled step 25% cheaper (1.34-1.41x there). Blocks whose
compile broke the graph are recorded too, and auto does not try them again.

Written here because torch has no such policy: it compiles when told to.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import torch
from torch import nn

from peftlab.fsutil import content_key, locked, write_json_atomic

FIRST_COMPILE_S = 45.0  # before any record: a cold compile, rounded up
FIRST_SAVING = 0.25  # before any record: the share of an eager step a compiled one saves
EAGER_STEPS = 8  # auto decides after these (the first, with the warm-up, not counted)
RECORD_NAME = "peftlab_compiled_training.json"


@dataclasses.dataclass
class CompileRecord:
    compile_s: float = FIRST_COMPILE_S
    saving: float = FIRST_SAVING
    broke: str | None = None  # why dynamo broke the blocks' graph, when it did
    measured: bool = False  # False: the figures are the defaults above


def blocks_key(blocks: list[nn.Module], precision: str, device) -> str:
    """What a record is kept under: torch's version, the device, the precision and each
    distinct block's class, module types and parameters (shape, dtype, trained or not)."""
    signatures = set()
    for block in blocks:
        params = [
            (name, tuple(p.shape), str(p.dtype), p.requires_grad)
            for name, p in block.named_parameters()
        ]
        types = sorted({type(m).__qualname__ for m in block.modules()})
        signatures.add(json.dumps([type(block).__qualname__, types, params]))
    parts = {"torch": torch.__version__, "device": str(device), "precision": precision}
    return content_key({**parts, "blocks": sorted(signatures)})


def record_path() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / RECORD_NAME


def read_record(key: str) -> CompileRecord:
    """The record kept for `key`, else the defaults (measured False)."""
    try:
        return CompileRecord(**_records(record_path())[key], measured=True)
    except (KeyError, TypeError):  # none kept, or an entry of another shape
        return CompileRecord()


def write_record(key: str, record: CompileRecord) -> str | None:
    """Keep `record` under `key`; why it could not be kept (an unwritable cache folder:
    the run's result does not depend on it), else None."""
    path = record_path()
    try:
        with locked(path):
            records = _records(path)
            entry = dataclasses.asdict(record)
            del entry["measured"]
            records[key] = entry
            write_json_atomic(path, records)
    except OSError as exc:
        return f"the compile's figures were not kept in {path} ({exc.strerror or exc})"
    return None


def _records(path: Path) -> dict:
    """Every kept record by key; an unreadable file, or one that holds no mapping, counts
    as none."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def should_compile(eager_step_s: float, steps_left: int, record: CompileRecord) -> tuple[bool, str]:
    """(compile?, why) for the steps left, from the eager step time and the record."""
    left_s = eager_step_s * steps_left
    saved_s = left_s * record.saving
    source = "measured here before" if record.measured else "first compile here, estimated"
    figures = (
        f"~{left_s:.0f} s of eager training left, ~{saved_s:.0f} s saved against a "
        f"~{record.compile_s:.0f} s compile ({source})"
    )
    return saved_s > record.compile_s, figures


@dataclasses.dataclass
class StepTimes:
    """Each training step's seconds, eager or compiled: the eager step auto decides on,
    and what the compile cost and saved, for the record. Means over steps (the batches'
    lengths vary, alike in both phases), the first of each phase apart: it holds the
    warm-up, or the compile."""

    eager: list[float] = dataclasses.field(default_factory=list)
    compiled: list[float] = dataclasses.field(default_factory=list)

    def add(self, seconds: float, compiled: bool) -> None:
        (self.compiled if compiled else self.eager).append(seconds)

    def eager_step_s(self) -> float | None:
        """The mean eager step after the first, once EAGER_STEPS ran; else None."""
        if len(self.eager) < EAGER_STEPS:
            return None
        return statistics.fmean(self.eager[1:])

    def measured(self, before: CompileRecord) -> CompileRecord | None:
        """What this run measured: the compile (the first compiled step over the mean of
        the later ones) and, with eager steps to compare, the saving (else the earlier
        figure). None with under three compiled steps."""
        if len(self.compiled) < 3:
            return None
        compiled_step = statistics.fmean(self.compiled[1:])
        compile_s = max(0.0, self.compiled[0] - compiled_step)
        saving = before.saving
        if len(self.eager) >= 3:
            saving = 1.0 - compiled_step / statistics.fmean(self.eager[1:])
        return CompileRecord(round(compile_s, 2), round(saving, 4), measured=True)
