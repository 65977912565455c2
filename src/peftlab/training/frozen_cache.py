"""Frozen lower layers computed once, reused every epoch.

When a method trains only layers k and up (LoRA on `--layers 6-11`, say), layers 0..k-1
are a fixed function of each training example: no gradient flows into them and their
weights never change. Their output is computed once per example before training, and
every training step then starts at layer k: the lower layers are swapped for
pass-throughs, the last of which hands over the stored output for the batch's rows.

The stored outputs are computed in eval mode, so the lower layers run without dropout
(decoder LMs like Llama/SmolLM2 have none there anyway: their results are unchanged).
It pays from the second epoch on; a run that sees each example once gains nothing and
does not use it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.models.selection import LAYER_CONTAINERS, layer_index
from peftlab.training.precision import autocast

# Stored outputs may take at most this share of the memory available when training starts.
MEMORY_SHARE = 0.25


class _StopForward(Exception):
    """Raised by a hook once the wanted layer's output is captured: the rest is not needed."""


@dataclass
class Stack:
    container: nn.ModuleList  # the model's list of layers
    first_trained: int  # k: layers below it are frozen


def find_stack(model) -> Stack | None:
    """The model's single layer list and its lowest trained layer, when layers below it
    are frozen; None otherwise (every layer trained, prompt methods, encoder-decoders)."""
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and name.split(".")[-1] in LAYER_CONTAINERS
        and len(module) > 1
    ]
    if len(stacks) != 1:
        return None  # no layer stack, or two (an encoder-decoder's)
    name, container = stacks[0]
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    inside = [layer_index(n) for n in trained if n.startswith(name + ".")]
    if not inside or min(inside) == 0:
        return None
    return Stack(container, min(inside))


def lower_output(model, stack: Stack, batch: dict, loss_fn) -> tuple[torch.Tensor, bool]:
    """Run the model on `batch` only as far as layer k-1; its output (and whether the layer
    returns a tuple, which the pass-throughs then mimic)."""
    captured = {}

    def capture(module, args, output):
        captured["tuple"] = isinstance(output, tuple)
        captured["hidden"] = output[0] if captured["tuple"] else output
        raise _StopForward

    hook = stack.container[stack.first_trained - 1].register_forward_hook(capture)
    try:
        loss_fn(model, batch)
    except _StopForward:
        pass
    finally:
        hook.remove()
    return captured["hidden"], captured["tuple"]


class _PassThrough(nn.Module):
    """Stands in for a frozen lower layer: hands its input on, or, as the last one, the
    stored outputs of the batch's rows."""

    def __init__(self, cache: FrozenCache | None, as_tuple: bool):
        super().__init__()
        self.cache, self.as_tuple = cache, as_tuple

    def forward(self, *args, **kwargs):
        hidden_states = args[0] if args else next(iter(kwargs.values()))
        if self.cache is not None:
            hidden_states = self.cache.batch_hidden()
        return (hidden_states,) if self.as_tuple else hidden_states


class FrozenCache:
    def __init__(self, stack: Stack, hidden: list[torch.Tensor], as_tuple: bool):
        self.stack, self.hidden, self.as_tuple = stack, hidden, as_tuple
        self._rows: list[int] = []
        self._mask: torch.Tensor | None = None
        self.build_seconds = 0.0

    @property
    def megabytes(self) -> float:
        return sum(h.numel() * h.element_size() for h in self.hidden) / 2**20

    def batch_hidden(self) -> torch.Tensor:
        """The stored outputs of the batch's rows at their real tokens; zeros at padding,
        which the attention mask hides from every real token."""
        first = self.hidden[self._rows[0]]
        out = first.new_zeros(*self._mask.shape, first.shape[-1])
        for row, index in enumerate(self._rows):
            out[row][self._mask[row]] = self.hidden[index]
        return out

    @contextlib.contextmanager
    def feeding(self, rows: list[int], attention_mask: torch.Tensor):
        """Inside: the model starts at layer k with the stored outputs of items `rows`."""
        container, k = self.stack.container, self.stack.first_trained
        originals = [container[i] for i in range(k)]
        self._rows, self._mask = rows, attention_mask.bool()
        for i in range(k):
            container[i] = _PassThrough(self if i == k - 1 else None, self.as_tuple)
        try:
            yield
        finally:
            for i, layer in enumerate(originals):
                container[i] = layer
            self._rows, self._mask = [], None


def build(model, task, items, batch_size: int, precision: str, device) -> FrozenCache | str | None:
    """Layer k-1's output for every item at its real tokens; None where no layers below
    the trained ones are frozen; a reason where they are but cannot be stored."""
    stack = find_stack(model)
    if stack is None:
        return None

    def batch_of(rows: list[int]) -> dict:
        return {k: v.to(device) for k, v in task.collate([items[i] for i in rows]).items()}

    was_training = model.training
    model.eval()
    try:
        with autocast(precision, device):
            # A trained weight before the stack (an embedding, say) makes the lower output
            # change with training: one small batch with gradients on shows it.
            probe, as_tuple = lower_output(model, stack, batch_of([0]), task.loss)
            if probe.requires_grad:
                return "weights below the trained layers are trained too"
            per_token = probe.shape[-1] * probe.element_size()
            estimate = sum(len(it.input_ids) for it in items) * per_token
            if estimate > MEMORY_SHARE * available_memory(device):
                return f"the stored outputs would take {estimate / 2**20:.0f} MB"
            hidden: list[torch.Tensor] = [probe] * len(items)
            order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
            with torch.no_grad():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    batch = batch_of(rows)
                    out, _ = lower_output(model, stack, batch, task.loss)
                    mask = batch["attention_mask"].bool()
                    for row, index in enumerate(rows):
                        hidden[index] = out[row][mask[row]].clone()
    finally:
        model.train(was_training)
    return FrozenCache(stack, hidden, as_tuple)


def available_memory(device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available
