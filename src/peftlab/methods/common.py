"""What every method shares: the Method entry, and the path into peft.

A method is a small config plus a function that attaches it (`Method`). peft's tuners
all go through `wrap_peft` with the task type the model's head asks for; module names come
from `targets` (models/selection.py), so peft never guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peftlab.config import MethodArgs, parse_layers
from peftlab.methods import head_copies
from peftlab.models import architecture, selection
from peftlab.models.loading import ModelInfo


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    attach: Callable  # (model, MethodArgs, ModelInfo) -> model with trainable params set
    kind: str  # "peft": standard peft adapter; "native": peftlab weights; "full": whole model
    merge: str | None = None  # None: mergeable; else the reason it cannot merge
    owns: Callable[[str], bool] = lambda name: True  # which parameter names are its own
    load_kwargs: Callable | None = None  # RunConfig -> from_pretrained kwargs (quantized bases)
    layer_selective: bool = True
    default_lr: float = 5e-4
    family: str = "low-rank"  # what kind of change it makes: `peftlab methods` groups by it
    check_options: Callable | None = None  # MethodArgs -> None: its --peft-options, up front
    loop_hooks: Callable | None = None  # MethodArgs -> training.hooks.LoopHooks (LoRA+, AdaLoRA)


PEFT_NAMES = ("lora_", "ia3_", "prompt_encoder", "modules_to_save", "prefix_encoder")


def is_peft_param(name: str) -> bool:
    return any(key in name for key in PEFT_NAMES)


def peft_method(name: str, description: str, attach: Callable, **kw) -> Method:
    return Method(name, description, attach, "peft", owns=is_peft_param, **kw)


def peft_task_type(info: ModelInfo):
    from peft import TaskType

    if info.head == "linear":
        return TaskType.SEQ_CLS  # also keeps the new classifier trainable and saved
    return TaskType.SEQ_2_SEQ_LM if info.kind == "seq2seq" else TaskType.CAUSAL_LM


def wrap_peft(model, config, info: ModelInfo):
    """peft's model for `config`; a new linear head trains and is saved with it whole.

    peft's classification task type saves modules named classifier or score only, and
    some heads have more new layers (DistilBERT's pre_classifier): name them all."""
    from peft import get_peft_model

    if info.head == "linear":
        config.modules_to_save = head_module_names(model, info)
    return get_peft_model(model, config)


def targets(model, args: MethodArgs, patterns: list[str] | None = None) -> list[str]:
    return selection.select_modules(
        model, args.target_modules or patterns, parse_layers(args.layers), args.side
    )


def fan_in_fan_out(model, names: list[str]) -> bool:
    """True where the targets store weights transposed (GPT-2's Conv1D): peft must know."""
    return all(architecture.is_transposed(model.get_submodule(n)) for n in names)


def head_module_names(model, info: ModelInfo) -> list[str]:
    """A linear head is new: it trains with every method. Label words add no weights."""
    if info.head != "linear":
        return []
    prefix = model.base_model_prefix
    return [
        n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())
    ]


def freeze_all_but(model, keep: Callable[[str], bool]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name))


def own_or_head(owns: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda name: owns(name) or head_copies.is_trained_copy_param(name)
