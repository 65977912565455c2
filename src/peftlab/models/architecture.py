"""What a model's own modules and config say about its architecture.

Methods ask here rather than keep lists per model family: which layers are linear
(nn.Linear, and transformers' Conv1D that GPT-2 uses, whose weight is stored transposed),
how wide they are, which ones are the feed-forward output projections, and the prompt
dimensions peft needs, read under whichever name a config uses for them.
"""

from __future__ import annotations

from peftlab.errors import ConfigError


def replace_module(model, name: str, new):
    """Put `new` where the submodule at dotted path `name` is; returns the one it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)  # "" is the model itself
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def linear_types() -> tuple[type, ...]:
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def norm_types(model) -> tuple[type, ...]:
    """The model's normalization layer classes (LayerNorm, RMSNorm, T5LayerNorm, ...): each
    family names its own, so they are read from the class names."""
    return tuple({type(m) for m in model.modules() if type(m).__name__.endswith("Norm")})


def is_transposed(module) -> bool:
    """Conv1D stores its weight as (in, out): peft's `fan_in_fan_out`."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def features(module) -> tuple[int, int]:
    """(in, out) features of a linear-like layer."""
    if is_transposed(module):
        return module.weight.shape[0], module.nf
    return module.in_features, module.out_features


def text_config(config):
    """The language model's config (a multimodal config nests it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


# The names configs use for one quantity: transformers' attribute maps cover most
# (DistilBERT's `dim`, GPT-2's `n_embd`, T5's `d_model` answer to hidden_size), the
# rest are listed after it.
DIMENSION_NAMES = {
    "token_dim": ("hidden_size", "n_embd", "d_model", "dim"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
}


def prompt_dimensions(config) -> dict[str, int]:
    """token_dim, num_attention_heads and num_layers for peft's prompt-learning configs."""
    text = text_config(config)
    found = {}
    for key, names in DIMENSION_NAMES.items():
        value = next((getattr(text, n) for n in names if getattr(text, n, None)), None)
        if not isinstance(value, int):
            raise ConfigError(
                "method.name",
                "prefix/prompt/ptuning",
                f"the model config ({text.model_type}) names no {key} (looked for "
                f"{', '.join(names)}); use a layer-wise method such as lora",
            )
        found[key] = value
    return found


def hidden_size(config) -> int:
    return prompt_dimensions(config)["token_dim"]


def feedforward_outputs(model, names: list[str]) -> list[str]:
    """The feed-forward output projections among `names`: wider in than the hidden size,
    out to the hidden size (up projections, attention and grouped key/value projections
    all fail one of the two)."""
    width = hidden_size(model.config)
    outputs = []
    for name in names:
        n_in, n_out = features(model.get_submodule(name))
        if n_out == width and n_in > width:
            outputs.append(name)
    return outputs


KEY_VALUE_WORDS = {"k", "key", "v", "value"}


def key_value_projections(names: list[str]) -> list[str]:
    """Attention key and value projections by name: k_proj, v_lin, key, value, k, v..."""
    return [n for n in names if n.rsplit(".", 1)[-1].split("_")[0] in KEY_VALUE_WORDS]


def takes_past_key_values(model) -> bool:
    """Whether the model (or its backbone) accepts a key/value cache: prefix tuning's way in."""
    import inspect

    backbone = getattr(model, model.base_model_prefix, model)
    return any(
        "past_key_values" in inspect.signature(m.forward).parameters for m in (model, backbone)
    )
