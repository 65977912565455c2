"""QLoRA as the paper describes it: NF4 with double quantization by default, computing in
the run's precision, and both recorded in run.json."""

import pytest
import torch
from builds import Built


def quant_states(model):
    weights = [getattr(m, "weight", None) for m in model.modules()]
    return [w.quant_state for w in weights if getattr(w, "quant_state", None) is not None]


@pytest.mark.parametrize("double_quant", [True, False])
def test_the_base_is_nf4_with_double_quantization_unless_turned_off(
    tiny_llama, sentiment_csv, double_quant
):
    built = Built(tiny_llama, sentiment_csv, "qlora", double_quant=double_quant)
    states = quant_states(built.model)
    assert states and all(s.quant_type == "nf4" for s in states)
    assert all(s.nested == double_quant for s in states)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_compute_dtype_follows_the_precision(tiny_llama, sentiment_csv, precision, dtype):
    from peftlab.methods.registry import METHODS

    built = Built(tiny_llama, sentiment_csv, "qlora")
    built.cfg.train.precision = precision
    config = METHODS["qlora"].load_kwargs(built.cfg)["quantization_config"]
    assert config.bnb_4bit_compute_dtype == dtype and config.bnb_4bit_use_double_quant


def test_loftq_starts_the_pair_from_what_quantization_lost(
    tiny_llama, sentiment_csv, capsys, tmp_path
):
    """LoftQ: in every 4-bit layer, the quantized weight plus the scaled starting pair is
    nearer the original weight than the quantized weight alone; the base stays 4-bit, so
    the adapter switched off is that base."""
    import bitsandbytes as bnb
    import tiny
    from peft.tuners.lora import Linear4bit
    from safetensors.torch import load_file
    from test_contract import disabled_model_equals_base

    from peftlab.cli import main

    built = Built(tiny_llama, sentiment_csv, "qlora", lora_r=8, lora_init="loftq")
    originals = load_file(str(tiny_llama / "model.safetensors"))
    before = after = 0.0
    for name, layer in built.model.named_modules():
        if isinstance(layer, Linear4bit):
            weight = layer.get_base_layer().weight
            lost = originals[name.removeprefix("base_model.model.") + ".weight"].float()
            lost -= bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
            pair = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
            before += lost.norm().item()
            after += (lost - layer.scaling["default"] * pair).norm().item()
    assert 0 < after < 0.9 * before, (before, after)  # rank 8 of 64: measured -22%
    assert quant_states(built.model)  # still a 4-bit base
    disabled_model_equals_base(built)
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, tmp_path / "run"), "--lora-init", "loftq"]
    assert main(argv) == 2 and "use --method qlora" in capsys.readouterr().err
    assert main([*argv, "--method", "qlora", "--quant-bits", "8"]) == 2
    assert "--quant-bits 4" in capsys.readouterr().err
