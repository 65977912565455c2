"""The method registry: name -> a small config plus a function that attaches it.

Every entry in METHODS is usable as `--method NAME`, listed by `peftlab methods`, and
checked by the shared contract suite (tests/test_contract.py): trainable parameters are
what the method owns, base weights never change in place (except under `full`),
save -> reload reproduces outputs, disabling gives the base model back, and merging is
exact where the method is mergeable and refused with a reason where it is not.

Two kinds of method: LoRA-style ones change layers (lora, dora, qlora, ia3, adapter,
bitfit); prompt-style ones change inputs (prefix, prompt, ptuning). peft implements most;
the bottleneck adapter and BitFit are ours (bottleneck.py, bitfit.py; head_copies.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from peftlab import architecture, bitfit, bottleneck, head_copies, selection
from peftlab.config import MethodArgs, RunConfig
from peftlab.errors import ConfigError, PeftlabError
from peftlab.failure import first_line
from peftlab.models import ModelInfo
from peftlab.trainable import load_trainable_state


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    attach: Callable  # (model, MethodArgs, ModelInfo) -> model with trainable params set
    kind: str  # "peft": standard peft adapter; "native": peftlab weights; "full": whole model
    merge: str | None = None  # None: mergeable; else the reason it cannot merge
    owns: Callable[[str], bool] = lambda name: True  # which parameter names are its own
    load_kwargs: Callable | None = None  # extra from_pretrained kwargs (quantized bases)
    layer_selective: bool = True
    default_lr: float = 5e-4


# ---------------------------------------------------------------- peft methods


def peft_task_type(info: ModelInfo):
    from peft import TaskType

    if info.head == "linear":
        return TaskType.SEQ_CLS  # also keeps the new classifier trainable and saved
    return TaskType.SEQ_2_SEQ_LM if info.kind == "seq2seq" else TaskType.CAUSAL_LM


def wrap_peft(model, config, info: ModelInfo):
    """peft's model for `config`; a new linear head trains and is saved with it whole.

    peft's classification task type saves modules named classifier or score only, and
    some heads have more new layers (DistilBERT's pre_classifier): name them all."""
    from peft import get_peft_model

    if info.head == "linear":
        config.modules_to_save = head_module_names(model, info)
    return get_peft_model(model, config)


def targets(model, args: MethodArgs, patterns: list[str] | None = None) -> list[str]:
    return selection.select_modules(
        model, args.target_modules or patterns, selection.parse_layers(args.layers), args.side
    )


def fan_in_fan_out(model, names: list[str]) -> bool:
    """True where the targets store weights transposed (GPT-2's Conv1D): peft must know."""
    return all(architecture.is_transposed(model.get_submodule(n)) for n in names)


def lora_config(model, args: MethodArgs, info: ModelInfo, **extra):
    from peft import LoraConfig

    names = targets(model, args)
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=names,
        fan_in_fan_out=fan_in_fan_out(model, names),
        task_type=peft_task_type(info),
        **extra,
    )


def attach_lora(model, args: MethodArgs, info: ModelInfo):
    return wrap_peft(model, lora_config(model, args, info), info)


def attach_dora(model, args: MethodArgs, info: ModelInfo):
    return wrap_peft(model, lora_config(model, args, info, use_dora=True), info)


# Heads stay in full precision: they are new (trained and saved whole) or tied.
UNQUANTIZED = ["classifier", "score", "classification_head", "lm_head"]


def qlora_load_kwargs(args: MethodArgs) -> dict:
    from transformers import BitsAndBytesConfig

    if args.quant_bits == 8:
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=UNQUANTIZED)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=UNQUANTIZED,
        )
    return {"quantization_config": config}


def attach_qlora(model, args: MethodArgs, info: ModelInfo):
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return wrap_peft(model, lora_config(model, args, info), info)


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


# Prompt-style configs get their dimensions from the model config here: peft's own
# lookup misses configs that name them otherwise (DistilBERT's dim, n_heads, n_layers).


def check_prompt_style(name: str, model, info: ModelInfo) -> None:
    """Encoder-decoders' sequence-classification classes (T5, BART) take neither input
    embeddings nor a cache from outside, so no virtual tokens can reach them."""
    if info.kind == "seq2seq" and info.head == "linear":
        raise ConfigError(
            "method.name",
            name,
            f"{name} feeds the model virtual tokens, which {type(model).__name__} does not "
            "take (no input embeddings, no past key values); choose a layer-wise method "
            "(lora, dora, qlora, ia3, adapter, bitfit) or full",
        )


def attach_prefix(model, args: MethodArgs, info: ModelInfo):
    from peft import PrefixTuningConfig

    check_prompt_style("prefix", model, info)
    if not architecture.takes_past_key_values(model):
        raise ConfigError(
            "method.name",
            "prefix",
            f"prefix tuning hands its trained keys and values to the model as a cache "
            f"(past_key_values), which {info.model_type} does not take; use prompt or "
            "ptuning (virtual input tokens) or a layer-wise method such as lora",
        )
    config = PrefixTuningConfig(
        num_virtual_tokens=args.num_virtual_tokens,
        task_type=peft_task_type(info),
        **architecture.prompt_dimensions(model.config),
    )
    model = wrap_peft(model, config, info)
    if args.prompt_init == "text" and info.kind == "causal_lm":
        from transformers import AutoTokenizer

        from peftlab.prefix_init import init_prefix_from_text

        check_init_text(args.prompt_init_text, info)
        init_prefix_from_text(
            model, AutoTokenizer.from_pretrained(info.path), args.prompt_init_text
        )
    return model


def attach_prompt(model, args: MethodArgs, info: ModelInfo):
    from peft import PromptTuningConfig, PromptTuningInit

    check_prompt_style("prompt", model, info)
    text_init = args.prompt_init == "text"
    if text_init:
        check_init_text(args.prompt_init_text, info)
    config = PromptTuningConfig(
        num_virtual_tokens=args.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text_init else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=args.prompt_init_text if text_init else None,
        tokenizer_name_or_path=info.path if text_init else None,
        task_type=peft_task_type(info),
        **architecture.prompt_dimensions(model.config),
    )
    return wrap_peft(model, config, info)


def check_init_text(text: str, info: ModelInfo) -> None:
    """peft repeats the init text's tokens to fill the prompt: it needs at least one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info.path)
    if not tokenizer(text, add_special_tokens=False)["input_ids"]:
        raise ConfigError(
            "method.prompt_init_text",
            text,
            "the model's tokenizer turns it into no tokens; give other text or "
            "--prompt-init random",
        )


def attach_ptuning(model, args: MethodArgs, info: ModelInfo):
    from peft import PromptEncoderConfig

    check_prompt_style("ptuning", model, info)
    config = PromptEncoderConfig(
        num_virtual_tokens=args.num_virtual_tokens,
        encoder_hidden_size=args.ptuning_hidden,
        task_type=peft_task_type(info),
        **architecture.prompt_dimensions(model.config),
    )
    model = wrap_peft(model, config, info)
    if args.prompt_init == "text":
        from transformers import AutoTokenizer

        from peftlab.ptuning_init import init_ptuning_from_text

        check_init_text(args.prompt_init_text, info)
        init_ptuning_from_text(
            model, AutoTokenizer.from_pretrained(info.path), args.prompt_init_text
        )
    return model


# ---------------------------------------------------------------- native methods


def head_module_names(model, info: ModelInfo) -> list[str]:
    """A linear head is new: it trains with every method. Label words add no weights."""
    if info.head != "linear":
        return []
    prefix = model.base_model_prefix
    return [
        n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())
    ]


def freeze_all_but(model, keep: Callable[[str], bool]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name))


def own_or_head(owns: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda name: owns(name) or head_copies.is_trained_copy_param(name)


def attach_adapter(model, args: MethodArgs, info: ModelInfo):
    names = adapter_targets(model, args)
    head_copies.train_copies(model, head_module_names(model, info))
    bottleneck.insert_adapters(model, names, args.adapter_size)
    freeze_all_but(model, own_or_head(bottleneck.is_adapter_param))
    return model


def adapter_targets(model, args: MethodArgs) -> list[str]:
    """After the feed-forward output projections (read from their shapes), and for
    Houlsby placement after the attention output projections too."""
    if args.target_modules:
        return targets(model, args)
    blocks = targets(model, args)
    names = architecture.feedforward_outputs(model, blocks)
    if args.adapter_placement == "houlsby":
        names += [
            n for n in blocks if any(selection.matches(n, p) for p in bottleneck.ATTENTION_OUTPUTS)
        ]
    if not names:
        raise ConfigError(
            "method.target_modules",
            None,
            "found no feed-forward or attention output projection for the adapters; name "
            f"them with --target-modules, from: {', '.join(selection.short_names(blocks)[:30])}",
        )
    return sorted(names, key=blocks.index)


def attach_bitfit(model, args: MethodArgs, info: ModelInfo):
    import torch.nn as nn

    names = selection.select_modules(
        model,
        args.target_modules,
        selection.parse_layers(args.layers),
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
        bitfit.add_bias_delta(module)
    freeze_all_but(model, own_or_head(bitfit.is_bias_delta_param))
    return model


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


# ---------------------------------------------------------------- the registry

PEFT_NAMES = ("lora_", "ia3_", "prompt_encoder", "modules_to_save", "prefix_encoder")
PROMPT_STYLE = "prompt-style methods add virtual tokens to the input; no weight to merge into"


def is_peft_param(name: str) -> bool:
    return any(key in name for key in PEFT_NAMES)


def peft_method(name: str, description: str, attach: Callable, **kw) -> Method:
    return Method(name, description, attach, "peft", owns=is_peft_param, **kw)


def prompt_method(name: str, description: str, attach: Callable, default_lr: float) -> Method:
    """Prompt-style: changes inputs, not layers, so no layer selection and no merge."""
    return peft_method(
        name, description, attach, default_lr=default_lr, merge=PROMPT_STYLE, layer_selective=False
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        peft_method(
            "lora", "LoRA: low-rank updates to linear layers (Hu et al. 2021)", attach_lora
        ),
        peft_method(
            "dora", "DoRA: LoRA with a learned magnitude per output (Liu et al. 2024)", attach_dora
        ),
        peft_method(
            "qlora",
            "QLoRA: LoRA on a 4-bit NF4 (or 8-bit) quantized base (Dettmers et al. 2023)",
            attach_qlora,
            load_kwargs=qlora_load_kwargs,
            merge="merging into a quantized base re-rounds the weights and changes outputs",
        ),
        peft_method(
            "ia3",
            "IA3: learned rescaling of keys, values and feed-forward activations (Liu et al. 2022)",
            attach_ia3,
            default_lr=5e-3,
        ),
        prompt_method(
            "prefix",
            "Prefix tuning: trained key/value prefixes in every layer (Li & Liang 2021)",
            attach_prefix,
            default_lr=1e-2,
        ),
        prompt_method(
            "prompt",
            "Prompt tuning: trained soft-prompt embeddings (Lester et al. 2021)",
            attach_prompt,
            default_lr=3e-2,
        ),
        prompt_method(
            "ptuning",
            "P-tuning: soft prompts from a small prompt encoder (Liu et al. 2021)",
            attach_ptuning,
            default_lr=1e-2,
        ),
        Method(
            "adapter",
            "Bottleneck adapters after attention and/or feed-forward (Houlsby et "
            "al. 2019; Pfeiffer et al. 2020)",
            attach_adapter,
            "native",
            default_lr=1e-3,
            merge="a bottleneck adapter is nonlinear (GELU); it cannot fold into a weight",
            owns=bottleneck.is_adapter_param,
        ),
        Method(
            "bitfit",
            "BitFit: train only the bias terms (Ben Zaken et al. 2022)",
            attach_bitfit,
            "native",
            default_lr=5e-3,
            owns=bitfit.is_bias_delta_param,
        ),
        Method(
            "full",
            "Full fine-tuning baseline: every weight trained",
            attach_full,
            "full",
            default_lr=5e-5,
            layer_selective=False,
            merge="full fine-tuning already produces a whole model; nothing to merge",
        ),
    ]
}


def base_model(model):
    """Context in which `model` computes exactly what the base model computes."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
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


def reload_artifact(method: Method, folder: Path, base, args: MethodArgs, info: ModelInfo):
    """Rebuild a trained model from a saved artifact on a freshly loaded base."""
    from safetensors.torch import load_file

    from peftlab.artifact import NATIVE_WEIGHTS

    if method.kind == "peft":
        from peft import PeftModel

        from peftlab.peft_folders import check_fits

        try:
            model = PeftModel.from_pretrained(base, folder)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise PeftlabError(
                f"peft cannot load the adapter in '{folder}' ({type(exc).__name__}: "
                f"{first_line(exc)}); its adapter_config.json or weights do not fit this "
                "base model"
            ) from None
        check_fits(model, Path(folder))
        return model
    if method.kind == "full":
        return type(base).from_pretrained(folder)
    model = method.attach(base, args, info)
    load_trainable_state(model, load_file(folder / NATIVE_WEIGHTS), str(folder / NATIVE_WEIGHTS))
    return model


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError("method.name", name, f"use one of: {', '.join(METHODS)}")
    return METHODS[name]


def checked(cfg: RunConfig) -> RunConfig:
    """`cfg.validate()`, then the checks that need the registry: a known method, and
    layer selection only for the methods that work layer by layer."""
    cfg.validate()
    m = cfg.method
    selective = m.target_modules or m.layers or m.side != "both"
    if not get_method(m.name).layer_selective and selective:
        raise ConfigError(
            "method.name",
            m.name,
            f"{m.name} does not take --target-modules, --layers or --side; drop them or "
            "choose a layer-wise method (lora, dora, qlora, ia3, adapter, bitfit)",
        )
    return cfg


def resolved(cfg: RunConfig) -> RunConfig:
    """`cfg.resolved()` with the method's own default learning rate."""
    return cfg.resolved(default_lr=get_method(cfg.method.name).default_lr)
