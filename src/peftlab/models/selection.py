"""Which modules a method touches: name patterns, layer indices, encoder/decoder side.

One function serves every method that works on modules (LoRA, DoRA, QLoRA, IA3,
bottleneck adapters, BitFit): it returns explicit module names, so peft never guesses,
and a selection that matches nothing is an error that lists what exists.
"""

from __future__ import annotations

import fnmatch

from peftlab.errors import ConfigError

LAYER_CONTAINERS = {"layers", "layer", "h", "block", "blocks"}


def layer_index(name: str) -> int | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in LAYER_CONTAINERS and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def side_of(name: str) -> str | None:
    for part in name.split("."):
        if "encoder" in part:
            return "encoder"
        if "decoder" in part:
            return "decoder"
    return None


def matches(name: str, pattern: str) -> bool:
    """A pattern matches a module by its full name, a dotted suffix, or a glob."""
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def select_modules(
    model,
    patterns: list[str] | None,
    layers: set[int] | None,
    side: str,
    module_type=None,
    field: str = "method.target_modules",
) -> list[str]:
    """Names of block modules (of `module_type`, default linear layers: nn.Linear and
    transformers' Conv1D) that pass every filter."""
    candidates = block_modules(model, module_type)
    selected = candidates
    if patterns:
        selected = [n for n in selected if any(matches(n, p) for p in patterns)]
    if layers is not None:
        selected = [n for n in selected if layer_index(n) in layers]
    if side != "both":
        selected = [n for n in selected if side_of(n) == side]
    if not selected:
        raise ConfigError(
            field, patterns or "(all)", describe_miss(model, candidates, layers, side)
        )
    return selected


def block_modules(model, module_type=None) -> list[str]:
    """Names of the modules of `module_type` (default: linear layers) inside layer blocks."""
    from peftlab.models.architecture import linear_types

    module_type = module_type or linear_types()
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, module_type) and layer_index(name) is not None
    ]


def short_names(names: list[str]) -> list[str]:
    """'model.layers.0.self_attn.q_proj' -> 'self_attn.q_proj', each once, sorted."""
    return sorted({".".join(n.split(".")[-2:]) for n in names})


def describe_miss(model, candidates: list[str], layers, side: str) -> str:
    if not candidates:  # no layered blocks: say what linear layers there are at all
        from peftlab.models.architecture import linear_types

        linear = [n for n, m in model.named_modules() if isinstance(m, linear_types())]
        return (
            "matches no module: this model has no numbered layer blocks; its linear layers "
            f"are {', '.join(short_names(linear)[:30]) or 'none'}"
        )
    indices = sorted({layer_index(n) for n in candidates})
    sides = sorted({side_of(n) or "-" for n in candidates})
    text = f"matches no module; this model has {', '.join(short_names(candidates)[:30])}"
    text += f"; layers {indices[0]}-{indices[-1]}"
    if layers is not None:
        text += f" (asked for layers {sorted(layers)})"
    if side != "both":
        text += f"; sides {sides} (asked for {side})"
    return text
