"""The method registry: name -> a small config plus a function that attaches it.

Every entry in METHODS is usable as `--method NAME`, listed by `peftlab methods`, and
checked by the shared contract suite (tests/test_contract.py): trainable parameters are
what the method owns, base weights never change in place (except under `full`),
save -> reload reproduces outputs, disabling gives the base model back, and merging is
exact where the method is mergeable and refused with a reason where it is not.

Two kinds of method: LoRA-style ones change layers (lora, dora, qlora, ia3, adapter,
bitfit); prompt-style ones change inputs (prefix, prompt, ptuning). peft implements most;
the bottleneck adapter and BitFit are ours. Each family is one module of this package
with its own METHODS list: a new method is a new module plus its line in FAMILIES.
"""

from __future__ import annotations

from peftlab.config import RunConfig
from peftlab.errors import ConfigError
from peftlab.methods import (
    adalora,
    bitfit,
    bottleneck,
    full,
    ia3,
    lora,
    peft_tuners,
    prompt_style,
)
from peftlab.methods.common import Method

FAMILIES = (lora, adalora, ia3, prompt_style, peft_tuners, bottleneck, bitfit, full)

METHODS: dict[str, Method] = {m.name: m for family in FAMILIES for m in family.METHODS}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError("method.name", name, f"use one of: {', '.join(METHODS)}")
    return METHODS[name]


def check_method_args(cfg: RunConfig) -> None:
    """A known method, layer selection only for the methods that work layer by layer, and
    --peft-options only for peft's other tuners, each a field of the tuner's config class."""
    m = cfg.method
    method = get_method(m.name)
    if method.check_options:
        method.check_options(m)
    elif m.peft_options:
        takers = [name for name, other in METHODS.items() if other.check_options]
        raise ConfigError(
            "method.peft_options",
            m.peft_options,
            f"{m.name} takes its own flags (see `peftlab run --help`); --peft-options is for "
            f"{', '.join(takers)}",
        )
    lora_like = [other.name for other in lora.METHODS]
    lora_options = {
        "rslora": m.rslora,
        "lora_plus_ratio": m.lora_plus_ratio,
        "lora_init": m.lora_init if m.lora_init != "default" else None,
        "lora_fa": m.lora_fa,
    }
    for option, given in lora_options.items():
        if given and m.name not in lora_like:
            raise ConfigError(
                f"method.{option}", given, f"only {', '.join(lora_like)} take it; drop it"
            )
    check_lora_fa(m)
    check_residual_init(m)
    check_loftq(m)
    selective = m.target_modules or m.layers or m.side != "both"
    if not method.layer_selective and selective:
        raise ConfigError(
            "method.name",
            m.name,
            f"{m.name} does not take --target-modules, --layers or --side; drop them or "
            "choose a layer-wise method (lora, dora, qlora, ia3, adapter, bitfit)",
        )


def check_residual_init(m) -> None:
    """PiSSA, OLoRA and CorDA move part of each base weight into the adapter, saved as a plain
    LoRA s (B A - B0 A0): a quantized base cannot hold the residual exactly, and DoRA's
    output is not linear in B A, so neither converts."""
    if m.name != "lora" and m.lora_init in ("pissa", "olora", "corda"):
        raise ConfigError(
            "method.lora_init",
            m.lora_init,
            f"{m.lora_init} starts lora only (a quantized base cannot hold its residual "
            "exactly; DoRA's magnitudes do not convert to a plain LoRA); use --method lora",
        )


def check_loftq(m) -> None:
    """LoftQ fits the pair to what 4-bit quantization lost: it needs a 4-bit base."""
    if m.lora_init == "loftq" and (m.name != "qlora" or m.quant_bits != 4):
        raise ConfigError(
            "method.lora_init",
            "loftq",
            "LoftQ starts the pair from a 4-bit base's quantization error: use --method "
            "qlora with --quant-bits 4",
        )


def check_lora_fa(m) -> None:
    """LoRA-FA's optimizer pairs each A with its B: DoRA's magnitudes are neither, and it
    sets its own rates, so LoRA+'s would be dropped silently."""
    if not m.lora_fa:
        return
    if m.name == "dora":
        raise ConfigError("method.lora_fa", True, "LoRA-FA trains LoRA's pairs only; use lora")
    if m.lora_plus_ratio:
        raise ConfigError(
            "method.lora_plus_ratio",
            m.lora_plus_ratio,
            "LoRA-FA sets the rates itself; drop --lora-plus-ratio or --lora-fa",
        )
