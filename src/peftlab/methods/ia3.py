"""IA3 (Liu et al. 2022): learned rescaling of keys, values and feed-forward activations,
through peft's IA3Config."""

from __future__ import annotations

from peftlab.config import MethodArgs
from peftlab.errors import ConfigError
from peftlab.methods.common import fan_in_fan_out, peft_method, peft_task_type, targets, wrap_peft
from peftlab.models import architecture, selection
from peftlab.models.loading import ModelInfo


def attach_ia3(model, args: MethodArgs, info: ModelInfo):
    from peft import IA3Config

    names, feedforward = ia3_targets(model, args, info)
    config = IA3Config(
        target_modules=names,
        feedforward_modules=feedforward,
        fan_in_fan_out=fan_in_fan_out(model, names),
        task_type=peft_task_type(info),
    )
    return wrap_peft(model, config, info)


def ia3_targets(model, args: MethodArgs, info: ModelInfo) -> tuple[list[str], list[str]]:
    """IA3 scales keys, values and the input of the feed-forward output projection.

    peft's mapping names them for the families it knows; for others they are read from
    the model: key/value projections by name, feed-forward outputs by their shapes."""
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as PEFT_FEEDFORWARD,
    )
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as PEFT_TARGETS,
    )

    if args.target_modules or info.model_type in PEFT_TARGETS:
        names = targets(model, args, PEFT_TARGETS.get(info.model_type))
    else:
        blocks = targets(model, args)  # every linear layer the layer/side filters allow
        feedforward = set(architecture.feedforward_outputs(model, blocks))
        names = [n for n in blocks if n in feedforward]
        names += architecture.key_value_projections([n for n in blocks if n not in feedforward])
        if not names:
            raise ConfigError(
                "method.target_modules",
                None,
                f"IA3 found no key, value or feed-forward output layers in '{info.model_type}'"
                f"; name them with --target-modules, from: "
                f"{', '.join(selection.short_names(blocks)[:30])}",
            )
    if info.model_type in PEFT_FEEDFORWARD:
        patterns = PEFT_FEEDFORWARD[info.model_type]
        feedforward = [n for n in names if any(selection.matches(n, p) for p in patterns)]
    else:
        feedforward = architecture.feedforward_outputs(model, names)
    return names, feedforward


METHODS = [
    peft_method(
        "ia3",
        "IA3: learned rescaling of keys, values and feed-forward activations (Liu et al. 2022)",
        attach_ia3,
        default_lr=5e-3,
        family="scaling",
    ),
]
