"""Full fine-tuning, the baseline every method is measured against: every weight trains."""

from __future__ import annotations

from peftlab.config import MethodArgs
from peftlab.errors import ConfigError
from peftlab.methods.common import Method
from peftlab.models.loading import ModelInfo


def attach_full(model, args: MethodArgs, info: ModelInfo):
    if args.target_modules or args.layers or args.side != "both":
        raise ConfigError(
            "method.name",
            "full",
            "full fine-tuning trains every weight; drop --target-modules, "
            "--layers and --side, or use a selective method",
        )
    for param in model.parameters():
        param.requires_grad_(True)
    return model


METHODS = [
    Method(
        "full",
        "Full fine-tuning baseline: every weight trained",
        attach_full,
        "full",
        default_lr=5e-5,
        layer_selective=False,
        merge="full fine-tuning already produces a whole model; nothing to merge",
        family="full",
    ),
]
