"""The LoRA family: LoRA (Hu et al. 2021), DoRA (Liu et al. 2024) and QLoRA (Dettmers et
al. 2023), all through peft's LoraConfig on the modules `targets` selects."""

from __future__ import annotations

import torch

from peftlab.config import MethodArgs, RunConfig
from peftlab.methods.common import fan_in_fan_out, peft_method, peft_task_type, targets, wrap_peft
from peftlab.models.loading import ModelInfo


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
        use_rslora=args.rslora,
        **extra,
    )


def lora_plus(args: MethodArgs):
    """LoRA+ (Hayou et al. 2024): B matrices learn `lora_plus_ratio` times faster than A
    (the paper's 16 for most tasks); None when the ratio is 0 (off)."""
    if not args.lora_plus_ratio:
        return None
    return lambda name: args.lora_plus_ratio if "lora_B" in name else 1.0


def attach_lora(model, args: MethodArgs, info: ModelInfo):
    return wrap_peft(model, lora_config(model, args, info), info)


def attach_dora(model, args: MethodArgs, info: ModelInfo):
    return wrap_peft(model, lora_config(model, args, info, use_dora=True), info)


# Heads stay in full precision: they are new (trained and saved whole) or tied.
UNQUANTIZED = ["classifier", "score", "classification_head", "lm_head"]


def qlora_load_kwargs(cfg: RunConfig) -> dict:
    """The base quantized as the QLoRA paper does: 4-bit NF4 with double quantization (the
    quantization constants quantized too: about 0.37 bits per weight saved), computing in
    the run's precision (bf16 where it resolved to bf16), or 8-bit."""
    from transformers import BitsAndBytesConfig

    args = cfg.method
    if args.quant_bits == 8:
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=UNQUANTIZED)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=args.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16
            if cfg.train.precision == "bf16"
            else torch.float32,
            llm_int8_skip_modules=UNQUANTIZED,
        )
    return {"quantization_config": config}


def attach_qlora(model, args: MethodArgs, info: ModelInfo):
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return wrap_peft(model, lora_config(model, args, info), info)


METHODS = [
    peft_method(
        "lora",
        "LoRA: low-rank updates to linear layers (Hu et al. 2021)",
        attach_lora,
        lr_scale=lora_plus,
    ),
    peft_method(
        "dora",
        "DoRA: LoRA with a learned magnitude per output (Liu et al. 2024)",
        attach_dora,
        lr_scale=lora_plus,
    ),
    peft_method(
        "qlora",
        "QLoRA: LoRA on a 4-bit NF4 (or 8-bit) quantized base (Dettmers et al. 2023)",
        attach_qlora,
        load_kwargs=qlora_load_kwargs,
        merge="merging into a quantized base re-rounds the weights and changes outputs",
        lr_scale=lora_plus,
    ),
]
