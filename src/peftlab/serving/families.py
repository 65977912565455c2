"""Adapters of every peft tuner type resident on one base model's weights.

peft keeps one tuner type per model (a LoraModel or an IA3Model), and PeftMixedModel
leaves IA3 out. So each tuner family gets its own PeftModel around its own copy of the
base model's module tree whose parameters and buffers *are* the base's tensors: the
weights sit in memory once, and a family costs only its module objects and its adapters.
The base itself stays bare, for "__base__" rows and for prompt-style adapters, which
change inputs and not layers (prompts.py).
"""

from __future__ import annotations

import copy

import torch


def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of a module tree that shares every parameter and buffer tensor."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


class Families:
    """One PeftModel per tuner family, each over a shared copy of the same base."""

    def __init__(self, base: torch.nn.Module):
        self.base = base
        self.models: dict[str, torch.nn.Module] = {}

    def load(self, family: str, folder: str, name: str):
        from peft import PeftModel

        model = self.models.get(family)
        if model is None:
            model = PeftModel.from_pretrained(shared_copy(self.base), folder, adapter_name=name)
            model.eval()
            self.models[family] = model
        else:
            model.load_adapter(folder, adapter_name=name)
            model.eval()
        return model

    def unload(self, family: str, name: str) -> None:
        """Delete the adapter; a family with no adapter left is dropped whole."""
        model = self.models[family]
        if list(model.peft_config) == [name]:
            del self.models[family]
        else:
            model.delete_adapter(name)
