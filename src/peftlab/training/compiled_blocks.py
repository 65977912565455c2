"""The model's layer blocks compiled by `torch.compile` while training (--compile-training).

Each block of the model's layer lists is compiled on its own (`nn.Module.compile`, what
PyTorch's recipes call regional compilation) rather than the whole model: the blocks of a
stack share their code, so dynamo traces one graph for all of them (the lowest block
stays eager, see layer_blocks), and the loss, the head and the optimizer stay eager.
`dynamic=True`, because static shapes recompiled for every new batch length (~20 s each
on SmolLM2). What it buys is the work around the matmuls, fused by inductor: norms,
RoPE, activations, residual sums and LoRA's small products, forward and backward.

Measured (bench/compiled_training.py, SmolLM2-135M + LoRA r=8 on every projection, batches
of 8 rows averaging 64 tokens, AMX Xeon): a step 1.34-1.41x faster than the eager fused
one in bf16, 1.19x in fp32; the compile costs each process 11-12 s with inductor's
on-disk cache warm, 33-111 s cold. So it pays on runs of hundreds of steps, not on
short ones: --compile-training auto compiles where it expects it to (compile_plan.py).

Inside the blocks peft's own LoRA layers run (fused_lora's hand-written node, compiled,
lost: 952 against 604 ms a step) and FastDropout draws its masks through its custom op.
A block dynamo cannot compile runs eagerly (`suppress_errors`), as it would without the
flag; and blocks that compile only in pieces (graph breaks) are uncompiled after the
first step, which the loop then runs on as without the flag (fused LoRA layers): pieces
were far slower than eager. Validation runs the eager blocks: in eval mode without
gradients a compiled block would need graphs of its own, compiled for a few batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from peftlab.models.selection import LAYER_CONTAINERS


def layer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks to compile: those of every layer list in `model` (an encoder-decoder
    has two lists; not the lists nested inside a block, as T5's sub-layers are) but the
    lowest of each. That one's input needs no gradient, so it would need a graph of its
    own: 5 s of a SmolLM2 run's 15 s warm compile, for a thirtieth of the gain (`peftlab
    run`, 75 steps: 15.2 against 13.6 samples/s with it compiled)."""
    containers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in LAYER_CONTAINERS
    ]
    outer = [
        module
        for name, module in containers
        if not any(name.startswith(other + ".") for other, _ in containers)
    ]
    return [block for container in outer for block in list(container)[1:]]


class CompiledBlocks:
    """The compiled blocks of a training run; `eager()` runs them uncompiled for a while,
    `undo()` for good."""

    def __init__(self, blocks: list[nn.Module]):
        self.blocks = blocks
        self.checked = False  # whether the first compiled step was looked at
        self._breaks_before = dict(graph_breaks())

    def __len__(self) -> int:
        return len(self.blocks)

    def graph_break(self) -> str | None:
        """Why dynamo broke a graph since the blocks were compiled (the first reason), or
        None. A broken block runs as many small graphs with eager code between them:
        BERT's (transformers' output-capturing hooks read a ContextVar) trained at 0.24x
        of the eager speed, MiniLM + LoRA on the AMX Xeon."""
        new = [
            reason
            for reason, count in graph_breaks().items()
            if count > self._breaks_before.get(reason, 0)
        ]
        return new[0].strip().splitlines()[0] if new else None

    def undo(self) -> None:
        """The blocks' own uncompiled calls again, for good (a second call changes nothing)."""
        for block in self.blocks:
            block._compiled_call_impl = None

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        # nn.Module.compile keeps the compiled call in _compiled_call_impl; None is the
        # module's own call again (what torch does when it pickles a compiled module).
        saved = [block._compiled_call_impl for block in self.blocks]
        for block in self.blocks:
            block._compiled_call_impl = None
        try:
            yield
        finally:
            for block, call in zip(self.blocks, saved, strict=True):
                block._compiled_call_impl = call


def reason_not_to_compile(model: nn.Module, device) -> str | None:
    """Why the blocks of `model` are not compiled here, or None: it has none above the
    lowest, or inductor has no C++ compiler on this CPU (dynamo would fail at the first
    step and run the unfused layers)."""
    if not layer_blocks(model):
        return "no layer blocks above the lowest to compile"
    if torch.device(device).type != "cpu":
        return None
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # inductor's own InvalidCxxCompiler, or a broken setting
        return (
            f"inductor found no C++ compiler ({type(exc).__name__}); install one (g++, "
            "e.g. Debian's build-essential) to compile"
        )
    return None


def graph_breaks() -> dict[str, int]:
    """dynamo's count of graph breaks in this process, by reason."""
    return torch._dynamo.utils.counters["graph_break"]


@contextlib.contextmanager
def compiled_blocks(model: nn.Module, log=print) -> Iterator[CompiledBlocks]:
    """Compile the layer blocks of `model` (layer_blocks) for the span of the context;
    they are the model's own uncompiled blocks again after it."""
    blocks = layer_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    log(
        f"compiling {len(blocks)} layer blocks for training (all but the lowest): the "
        "first steps include the compile (about 10 s with inductor's cache warm, "
        "a minute or more cold)"
    )
    compiled = CompiledBlocks(blocks)
    try:
        with torch._dynamo.config.patch(suppress_errors=True):
            yield compiled
    finally:
        compiled.undo()
