"""BitFit (Ben Zaken et al. 2022): only the bias terms train, as a parametrization.

bias = frozen base bias + trained delta: the base bias is never changed in place, so the
base model stays one switch away, and merging (folding the delta in) is exact.
"""

from __future__ import annotations

import torch
import torch.nn as nn


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
