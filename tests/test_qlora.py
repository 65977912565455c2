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
