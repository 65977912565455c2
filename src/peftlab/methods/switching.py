"""A method switched off and folded in: the bare base model in the same process, and
merging where the method allows it (refused with the reason elsewhere)."""

from __future__ import annotations

import contextlib

from peftlab.errors import PeftlabError
from peftlab.methods import bitfit, bottleneck, head_copies, residual_init
from peftlab.methods.common import Method
from peftlab.models import architecture


def base_model(model):
    """Context in which `model` computes exactly what the base model computes."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if residual_init.has_residual_base(model):  # PiSSA, OLoRA: W = W_res + s B0 A0
            return residual_init.initial_pair_in_place(model)
        if model.active_peft_config.is_prompt_learning:
            return _prompt_learning_disabled(model)
        return model.disable_adapter()
    own = [m for m in model.modules() if isinstance(m, SWITCHABLE)]
    if own:
        return _switched_off(own)
    return contextlib.nullcontext()  # `full` before training is the base model itself


# Our own layers (bottleneck adapters, BitFit deltas, trained head copies) each run the
# base alone while their `enabled` is False.
SWITCHABLE = (bottleneck.WithAdapter, bitfit.BiasDelta, head_copies.TrainedCopy)


@contextlib.contextmanager
def _switched_off(layers):
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


@contextlib.contextmanager
def _prompt_learning_disabled(model):
    # peft's disable_adapter() for prompt learning breaks on classification models (no
    # prepare_inputs_for_generation) and leaves a trained head active: switch both here.
    from peft.utils.other import ModulesToSaveWrapper

    wrappers = [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
    model.forward = model.base_model.forward
    for wrapper in wrappers:
        wrapper.enable_adapters(False)
    try:
        yield model
    finally:
        del model.forward  # back to the class's forward
        for wrapper in wrappers:
            wrapper.enable_adapters(True)


def merge_method(model, method: Method):
    """Fold the method into the base weights; refused with the reason where impossible."""
    if method.merge:
        raise PeftlabError(f"cannot merge {method.name}: {method.merge}")
    if method.kind == "peft":
        keep_trained_heads(model)
        model = model.merge_and_unload()
    else:
        bitfit.merge_bias_deltas(model)
        head_copies.merge_trained_copies(model)
    return model.requires_grad_(False)  # a merged model is for inference


def keep_trained_heads(model) -> None:
    """Put each trained head (peft's modules_to_save copy) in place of its wrapper.

    merge_and_unload does this itself, except IA3's, which breaks on a head that is not
    one linear layer (RoBERTa's dense + out_proj head: "has no attribute 'weight'")."""
    from peft.utils.other import ModulesToSaveWrapper

    inner = model.get_base_model()
    for name, module in list(inner.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            architecture.replace_module(inner, name, module.modules_to_save[model.active_adapter])
