"""Prompt-style methods change the inputs, not the layers: prefix tuning, prompt tuning and
P-tuning through peft, started from text where asked (prefix_init.py, ptuning_init.py).

Their dimensions come from the model config here: peft's own lookup misses configs that
name them otherwise (DistilBERT's dim, n_heads, n_layers)."""

from __future__ import annotations

from collections.abc import Callable

from peftlab.config import MethodArgs
from peftlab.errors import ConfigError
from peftlab.methods.common import Method, peft_method, peft_task_type, wrap_peft
from peftlab.models import architecture
from peftlab.models.loading import ModelInfo

PROMPT_STYLE = "prompt-style methods add virtual tokens to the input; no weight to merge into"


def prompt_method(name: str, description: str, attach: Callable, default_lr: float) -> Method:
    """Prompt-style: changes inputs, not layers, so no layer selection and no merge."""
    return peft_method(
        name,
        description,
        attach,
        default_lr=default_lr,
        merge=PROMPT_STYLE,
        layer_selective=False,
        family="prompt-style",
    )


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

        from peftlab.methods.prefix_init import init_prefix_from_text

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

        from peftlab.methods.ptuning_init import init_ptuning_from_text

        check_init_text(args.prompt_init_text, info)
        init_ptuning_from_text(
            model, AutoTokenizer.from_pretrained(info.path), args.prompt_init_text
        )
    return model


METHODS = [
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
]
