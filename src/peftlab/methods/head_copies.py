"""A new module (a classification head) trained as a copy while the original stays
frozen, so the base model stays one switch away: what peft's modules_to_save does, for
the methods that are ours (bottleneck adapters, BitFit)."""

from __future__ import annotations

import copy

import torch.nn as nn

from peftlab.models.architecture import replace_module


class TrainedCopy(nn.Module):
    def __init__(self, original: nn.Module):
        super().__init__()
        self.trained = copy.deepcopy(original)
        self.original = original.requires_grad_(False)
        self.enabled = True

    def forward(self, *args, **kwargs):
        return (self.trained if self.enabled else self.original)(*args, **kwargs)


def train_copies(model, names: list[str]) -> None:
    for name in names:
        replace_module(model, name, TrainedCopy(model.get_submodule(name)))


def merge_trained_copies(model) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, TrainedCopy):
            replace_module(model, name, module.trained)


def is_trained_copy_param(name: str) -> bool:
    return name.startswith("trained.") or ".trained." in name
