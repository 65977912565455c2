"""The method registry: name -> a function that attaches the method to a model.

A method is a small config (fields of `MethodArgs`) plus an attach function. `full` is
the baseline: no adapter, every weight trained. Adding a method means adding one entry
to METHODS; the CLI and `peftlab methods` read this dict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from peftlab.config import MethodArgs
from peftlab.errors import ConfigError
from peftlab.models import ModelInfo


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    attach: Callable  # (model, MethodArgs, ModelInfo) -> model with trainable params set
    peft: bool  # saved as a standard peft adapter (else as a whole model)


def peft_task_type(info: ModelInfo):
    from peft import TaskType

    if info.head == "linear":
        return TaskType.SEQ_CLS  # also keeps the new classifier trainable and saved
    return TaskType.SEQ_2_SEQ_LM if info.kind == "seq2seq" else TaskType.CAUSAL_LM


def attach_lora(model, args: MethodArgs, info: ModelInfo):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.target_modules or "all-linear",
        task_type=peft_task_type(info),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ConfigError(
            "method.target_modules",
            args.target_modules,
            f"{str(exc).splitlines()[0]}; module names in this model: {', '.join(names)}",
        ) from None


def attach_full(model, args: MethodArgs, info: ModelInfo):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


METHODS: dict[str, Method] = {
    "lora": Method(
        "lora", "LoRA: low-rank updates to linear layers (Hu et al. 2021)", attach_lora, peft=True
    ),
    "full": Method(
        "full", "Full fine-tuning baseline: every weight trained", attach_full, peft=False
    ),
}


def base_model(model):
    """Context in which `model` computes exactly what the base model computes."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.disable_adapter()
    return contextlib.nullcontext()  # `full` before training is the base model itself


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError("method.name", name, f"use one of: {', '.join(METHODS)}")
    return METHODS[name]
