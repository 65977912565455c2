"""BitFit (Ben Zaken et al. 2022): only the bias terms train, as a parametrization.

bias = frozen base bias + trained delta: the base bias is never changed in place, so the
base model stays one switch away, and merging (folding the delta in) is exact.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from peftlab.config import MethodArgs, parse_layers
from peftlab.errors import ConfigError
from peftlab.methods import head_copies
from peftlab.methods.common import Method, freeze_all_but, head_module_names, own_or_head
from peftlab.models import selection
from peftlab.models.loading import ModelInfo


class BiasDelta(nn.Module):
    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros_like(bias))
        self.enabled = True

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return bias + self.delta if self.enabled else bias


def add_bias_delta(module: nn.Module) -> None:
    from torch.nn.utils import parametrize

    parametrize.register_parametrization(module, "bias", BiasDelta(module.bias))


def merge_bias_deltas(model) -> None:
    from torch.nn.utils import parametrize

    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "bias"):
            parametrize.remove_parametrizations(module, "bias", leave_parametrized=True)


def is_bias_delta_param(name: str) -> bool:
    return name.endswith(".parametrizations.bias.0.delta")


def attach_bitfit(model, args: MethodArgs, info: ModelInfo):
    names = selection.select_modules(
        model,
        args.target_modules,
        parse_layers(args.layers),
        args.side,
        module_type=nn.Module,
    )
    modules = [model.get_submodule(n) for n in names]
    modules = [m for m in modules if isinstance(getattr(m, "bias", None), nn.Parameter)]
    if not modules:
        raise ConfigError(
            "method.name",
            "bitfit",
            f"this model ({info.model_type}) has no bias terms to train in the "
            "selected modules; choose another method (e.g. lora)",
        )
    head_copies.train_copies(model, head_module_names(model, info))
    for module in modules:
        add_bias_delta(module)
    freeze_all_but(model, own_or_head(is_bias_delta_param))
    return model


METHODS = [
    Method(
        "bitfit",
        "BitFit: train only the bias terms (Ben Zaken et al. 2022)",
        attach_bitfit,
        "native",
        default_lr=5e-3,
        owns=is_bias_delta_param,
        family="bias",
    ),
]
