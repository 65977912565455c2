"""How a training run's steps run: peft's LoRA layers fused (fused_lora) or the layer
blocks compiled (compiled_blocks), by --compile-training: off, on, or auto (compile
mid-run where compile_choice expects it to pay).

The loop tells the plan when a step ended; the plan switches from the fused layers to the
compiled blocks (auto, once it has the eager step time), back to the fused layers for good
when the compile broke the graph or cannot happen, and records on exit what the compile
cost and saved (compile_choice's record).
"""

from __future__ import annotations

import contextlib

from torch import nn

from peftlab.training import compile_choice
from peftlab.training.compiled_blocks import (
    CompiledBlocks,
    compiled_blocks,
    layer_blocks,
    reason_not_to_compile,
)
from peftlab.training.fused_lora import fused_lora


class CompilePlan:
    """Enter it around the steps (fused layers unless on), `start()` once the FLOP count
    and the frozen layers' outputs are done (they run the eager blocks), then
    `step_done()` after every step and `eager()` around each validation."""

    def __init__(self, model: nn.Module, mode: str, precision: str, device, processes, log):
        self.model, self.mode, self.log = model, mode, log
        self.precision, self.device, self.processes = precision, device, processes
        self.compiled: CompiledBlocks | None = None
        self.times = compile_choice.StepTimes()
        self.pending = False  # auto, still timing eager steps
        self.decision = "off" if mode == "off" else ""
        self.compiled_at_step: int | None = None
        self.key: str | None = None
        self.record = compile_choice.CompileRecord()
        self._stack = contextlib.ExitStack()
        self._fused = contextlib.ExitStack()

    def __enter__(self) -> CompilePlan:
        self._stack.__enter__()
        self._stack.enter_context(self._fused)
        if self.mode != "on":
            self._fused.enter_context(fused_lora(self.model))
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._stack.__exit__(*exc_info)
        finally:
            if exc_info[0] is None:
                self.remember()

    def start(self) -> None:
        reason = self.reason_not_to_compile()
        if self.mode == "on" and reason:
            self.train_eagerly(reason)
        elif self.mode == "on":
            self.decision = "on"
            self.compile(0)
        elif self.mode == "auto":
            self.pending = reason is None
            self.decision = f"auto: not compiled ({reason})" if reason else ""

    def reason_not_to_compile(self) -> str | None:
        """Why the blocks are not compiled in this run, or None (then self.record is what
        this machine recorded for them)."""
        if self.mode == "off":
            return "off"
        auto = self.mode == "auto"
        if auto and str(self.device).split(":")[0] != "cpu":
            return "auto compiles on a CPU only, where it was measured"
        if auto and self.processes > 1:
            return "auto compiles in a run of one process only"
        reason = reason_not_to_compile(self.model, self.device)
        if reason is None:
            blocks = layer_blocks(self.model)
            self.key = compile_choice.blocks_key(blocks, self.precision, self.device)
            self.record = compile_choice.read_record(self.key)
            if auto and self.record.broke:
                reason = (
                    f"these blocks broke their graph when compiled here before: {self.record.broke}"
                )
        return reason

    def compile(self, step: int) -> None:
        self._fused.close()
        self.compiled = self._stack.enter_context(compiled_blocks(self.model, self.log))
        self.compiled_at_step = step

    def train_eagerly(self, reason: str) -> None:
        """--compile-training on, but the steps run as without it (fused LoRA layers) from
        here on; the note says why."""
        self._fused.enter_context(fused_lora(self.model))
        self.decision = f"on: not compiled ({reason})"
        self.log(f"note: --compile-training: {reason}; training eagerly")

    def step_done(self, seconds: float, step: int, steps_left: int) -> None:
        self.times.add(seconds, compiled=self.compiled is not None)
        if self.compiled is not None and not self.compiled.checked:
            self.keep_or_undo_compile()
        elif self.pending:
            self.maybe_compile(step, steps_left)

    def keep_or_undo_compile(self) -> None:
        """After the first compiled step: blocks that compiled only in pieces (graph
        breaks) are uncompiled, recorded as such, and the run goes on eagerly."""
        compiled = self.compiled
        compiled.checked = True
        reason = compiled.graph_break()
        if reason is None:
            return
        compiled.undo()
        self.compiled = None
        self.record = compile_choice.CompileRecord(broke=reason, measured=True)
        self.keep(self.record)
        self.train_eagerly(
            f"this model's blocks compile only in pieces (graph break: {reason}), which "
            "trains slower than eager"
        )

    def maybe_compile(self, step: int, steps_left: int) -> None:
        eager_step_s = self.times.eager_step_s()
        if eager_step_s is None:
            return
        self.pending = False
        go, why = compile_choice.should_compile(eager_step_s, steps_left, self.record)
        self.decision = f"auto: {'compiled' if go else 'not compiled'} at step {step} ({why})"
        if go:
            self.log(f"--compile-training auto: compiling for the {steps_left} steps left: {why}")
            self.compile(step)

    def eager(self) -> contextlib.AbstractContextManager:
        """The blocks uncompiled for a while (validation: in eval mode a compiled block
        would need graphs of its own, for a few batches)."""
        return self.compiled.eager() if self.compiled else contextlib.nullcontext()

    def remember(self) -> None:
        """Record what this run's compile cost and saved, for auto's next decisions."""
        measured = self.times.measured(self.record)
        if measured is not None and self.key is not None and self.compiled is not None:
            self.keep(measured)

    def keep(self, record: compile_choice.CompileRecord) -> None:
        problem = compile_choice.write_record(self.key, record)
        if problem:
            self.log(f"note: --compile-training: {problem}")

    def summary(self) -> dict:
        decision = self.decision
        if self.pending:
            steps = compile_choice.EAGER_STEPS
            decision = f"auto: not compiled (the run ended before {steps} steps were timed)"
        return {
            "compiled_blocks": len(self.compiled) if self.compiled else 0,
            "compile_training": decision,
            "compiled_at_step": self.compiled_at_step,
        }
