"""What a method may add to the one training loop, each part optional.

LoRA+ changes the rates of some parameters and LoRA-FA the optimizer; EVA initializes
LoRA from the training data's activations; AdaLoRA sets its rank budget schedule from the
run's step count, adds its orthogonality term to the loss and reallocates ranks after
each optimizer step, while the gradients it scores importance by are still there. The
loop calls these and knows nothing of the methods behind them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RunStart:
    """What a method may read before the first step (and before the optimizer exists)."""

    total_steps: int
    batches: Callable  # (size=batch size) -> the training examples collated, in order
    forward: Callable  # (model, batch) -> the task's loss: a forward pass as training runs it


@dataclass(frozen=True)
class LoopHooks:
    lr_scale: Callable | None = None  # parameter name -> rate multiplier
    optimizer: Callable | None = None  # (model, TrainArgs) -> the optimizer, in AdamW's place
    start: Callable | None = None  # (model, RunStart) -> None, before the optimizer exists
    extra_loss: Callable | None = None  # model -> a loss term added to each step's loss
    after_optimizer_step: Callable | None = None  # (model, step) -> None, grads still set


NO_HOOKS = LoopHooks()
