"""The LoRA family: LoRA (Hu et al. 2021), DoRA (Liu et al. 2024) and QLoRA (Dettmers et
al. 2023), all through peft's LoraConfig on the modules `targets` selects."""

from __future__ import annotations

from functools import partial

import torch

from peftlab.config import MethodArgs, RunConfig, TrainArgs
from peftlab.errors import ConfigError
from peftlab.methods.common import fan_in_fan_out, peft_method, peft_task_type, targets, wrap_peft
from peftlab.methods.residual_init import RESIDUAL_INITS, corda_start, keep_initial_pair
from peftlab.models.loading import ModelInfo
from peftlab.training.hooks import LoopHooks


def lora_config(model, args: MethodArgs, info: ModelInfo, **extra):
    from peft import EvaConfig, LoraConfig

    names = targets(model, args)
    if args.lora_init == "eva":  # the pair is set from data by the loop (eva_start)
        extra = {**extra, "init_lora_weights": "eva", "eva_config": EvaConfig()}
    elif args.lora_init == "gaussian":
        extra = {**extra, "init_lora_weights": "gaussian"}
    elif args.lora_init in RESIDUAL_INITS:
        if args.lora_init == "olora" and fan_in_fan_out(model, names):
            raise ConfigError(
                "method.lora_init",
                "olora",
                "peft's OLoRA does not take transposed (GPT-2 Conv1D) weights; use pissa",
            )
        extra = {**extra, "init_lora_weights": RESIDUAL_INITS[args.lora_init]}
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


def lora_hooks(args: MethodArgs) -> LoopHooks | None:
    """What LoRA's options add to the loop: LoRA+'s rates, the data pass of EVA or CorDA,
    LoRA-FA's optimizer; None when none is on."""
    scale = lora_plus(args)
    start = {"eva": eva_start, "corda": corda_start}.get(args.lora_init)
    optimizer = partial(lora_fa_optimizer, args) if args.lora_fa else None
    if not (scale or start or optimizer):
        return None
    return LoopHooks(lr_scale=scale, start=start, optimizer=optimizer)


def lora_fa_optimizer(args: MethodArgs, model, train: TrainArgs):
    """peft's LoRA-FA optimizer: it freezes every A and projects B's gradient by A."""
    from peft.optimizers import create_lorafa_optimizer

    return create_lorafa_optimizer(
        model, args.lora_r, args.lora_alpha, train.lr, weight_decay=train.weight_decay
    )


def lora_plus(args: MethodArgs):
    """LoRA+ (Hayou et al. 2024): B matrices learn `lora_plus_ratio` times faster than A
    (the paper's 16 for most tasks); None when the ratio is 0 (off)."""
    if not args.lora_plus_ratio:
        return None
    return lambda name: args.lora_plus_ratio if "lora_B" in name else 1.0


def eva_start(model, run) -> None:
    """EVA (Paischer et al. 2024): each A is set to the top right-singular vectors of its
    layer's inputs over the training batches (peft's incremental SVD, cycled until the
    components settle), and ranks move to the layers whose inputs need them. Forward
    passes run the way training does (the task's loss), so every task and head works."""
    from peft import initialize_lora_eva_weights

    initialize_lora_eva_weights(
        model,
        dataloader=run.batches(),
        forward_fn=run.forward,
        prepare_model_inputs_fn=lambda batch, config: batch["attention_mask"].bool(),
        prepare_layer_inputs_fn=unpadded_rows,
        show_progress_bar=False,
    )


def unpadded_rows(layer_input, mask, layer_name):
    """A layer's inputs as rows for the SVD, padding left out where the layer sees the
    prompt's positions (an encoder-decoder's decoder sees others: all of them are kept)."""
    x = layer_input[0] if isinstance(layer_input, tuple | list) else layer_input
    if x.shape[:-1] == mask.shape:
        return x[mask]
    return x.reshape(-1, x.shape[-1])


def attach_lora(model, args: MethodArgs, info: ModelInfo, **extra):
    model = wrap_peft(model, lora_config(model, args, info, **extra), info)
    if args.lora_init in RESIDUAL_INITS:
        keep_initial_pair(model)  # the base is now a residual: methods/residual_init.py
    return model


def attach_dora(model, args: MethodArgs, info: ModelInfo):
    return attach_lora(model, args, info, use_dora=True)


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
    model = wrap_peft(model, lora_config(model, args, info), info)
    if args.lora_init == "loftq":
        loftq_start(model)
    return model


def loftq_start(model) -> None:
    """LoftQ (Li et al. 2023) on a base already in 4 bits: each pair starts as the best
    rank-r fit of what quantization took from its weight (the original read from the
    model's safetensors files), so training starts nearer the unquantized model; the base
    stays quantized, and the adapter is an ordinary one for the same 4-bit base.

    peft's replace_lora_weights_loftq does this on CUDA or XPU only and fits B A without
    LoRA's scaling (peft 0.21.2); the same steps run here on the weights' own device with
    peft's loader and decomposition, fitting s B A to the error."""
    import os

    import bitsandbytes as bnb
    from peft.tuners.lora import Linear4bit
    from peft.utils.loftq_utils import _low_rank_decomposition, _SafetensorLoader

    adapter, prefix = model.active_adapter, "base_model.model."
    folder = model.get_base_model().config._name_or_path
    originals = _SafetensorLoader(model, folder if os.path.isdir(folder) else None)
    with torch.no_grad():
        for name, layer in model.named_modules():
            if not isinstance(layer, Linear4bit) or adapter not in layer.r:
                continue
            weight = layer.get_base_layer().weight
            lost = originals.get_tensor(name.removeprefix(prefix) + ".weight").float()
            lost = (
                lost.to(weight.device)
                - bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
            )
            fit = _low_rank_decomposition(lost / layer.scaling[adapter], layer.r[adapter])
            a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            a.data, b.data = fit["R"].to(a.dtype), fit["L"].to(b.dtype)


METHODS = [
    peft_method(
        "lora",
        "LoRA: low-rank updates to linear layers (Hu et al. 2021)",
        attach_lora,
        loop_hooks=lora_hooks,
    ),
    peft_method(
        "dora",
        "DoRA: LoRA with a learned magnitude per output (Liu et al. 2024)",
        attach_dora,
        loop_hooks=lora_hooks,
    ),
    peft_method(
        "qlora",
        "QLoRA: LoRA on a 4-bit NF4 (or 8-bit) quantized base (Dettmers et al. 2023)",
        attach_qlora,
        load_kwargs=qlora_load_kwargs,
        merge="merging into a quantized base re-rounds the weights and changes outputs",
        loop_hooks=lora_hooks,
    ),
]
