"""The fused LoRA path computes what peft's LoRA layers compute: the same outputs, the
same gradients, the same dropout masks, and peft's own path wherever it does not apply."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from peftlab.training.fast_dropout import use_fast_dropout
from peftlab.training.fused_lora import fused_lora, lora_layers
from peftlab.training.precision import autocast, bf16_frozen_weights


def lora_llama(tiny_llama, dropout: float, **options):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
    model = get_peft_model(base, LoraConfig(**{**config.to_dict(), **options}))
    for name, param in model.named_parameters():  # B starts at zero: make it matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    use_fast_dropout(model)
    return model.train()


def loss_and_grads(model, ids, precision: str = "fp32"):
    model.zero_grad()
    torch.manual_seed(7)  # the dropout masks are drawn from torch's generator
    with autocast(precision, torch.device("cpu")):
        logits = model(input_ids=ids).logits
    loss = logits.float().pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_layers_match_peft_outputs_and_gradients(tiny_llama, dropout):
    model = lora_llama(tiny_llama, dropout)
    ids = torch.randint(0, model.config.vocab_size, (3, 11))
    expected_logits, expected_grads = loss_and_grads(model, ids)
    with fused_lora(model) as fused:
        assert fused == len(lora_layers(model)) > 0
        logits, grads = loss_and_grads(model, ids)
    assert torch.allclose(logits, expected_logits, atol=1e-5, rtol=1e-4)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-6, rtol=1e-4), name
    assert "forward" not in vars(lora_layers(model)[0])  # peft's own forward is back


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm())


def test_under_bf16_autocast_the_fused_layers_compute_in_bf16_like_peft(tiny_llama):
    """As training runs on a CPU with native bf16: autocast, frozen weights as bf16 copies.
    Both paths round in bf16 (in a different order), so they agree to bf16's precision;
    the trainable weights' gradients stay fp32."""
    model = lora_llama(tiny_llama, 0.2)
    ids = torch.randint(0, model.config.vocab_size, (3, 11))
    with bf16_frozen_weights(model, "bf16") as copies:
        assert copies > 0
        expected_logits, expected_grads = loss_and_grads(model, ids, "bf16")
        with fused_lora(model):
            logits, grads = loss_and_grads(model, ids, "bf16")
    assert logits.dtype == expected_logits.dtype == torch.bfloat16
    assert relative_error(logits, expected_logits) < 2e-2  # a 5% error in alpha: 0.05
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        assert relative_error(grad, expected_grads[name]) < 5e-2, name  # there: 0.17


def test_a_shared_input_is_kept_once_and_an_own_cast_is_kept_dropped_out():
    """fp32: q, k and v keep the one input they share (no dropped-out copy each); under
    bf16 autocast each node's input is its own cast, and it keeps the dropped-out input."""
    from peft.tuners.lora.layer import Linear

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["0"])
    layer = get_peft_model(torch.nn.Sequential(torch.nn.Linear(16, 16)), config).train()
    use_fast_dropout(layer)
    adapted = next(m for m in layer.modules() if type(m) is Linear)
    x = torch.randn(3, 5, 16, requires_grad=True)
    with fused_lora(layer):
        kept = adapted(x).grad_fn.saved_tensors[0]
        assert kept.data_ptr() == x.data_ptr()  # the input itself, shared
        with autocast("bf16", torch.device("cpu")):
            kept = adapted(x).grad_fn.saved_tensors[0]
    assert kept.dtype == torch.bfloat16 and 0.3 < float((kept == 0).float().mean()) < 0.7


def test_layers_it_does_not_cover_run_pefts_forward(tiny_llama):
    model = lora_llama(tiny_llama, 0.1, use_dora=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    expected_logits, expected_grads = loss_and_grads(model, ids)
    with fused_lora(model):
        logits, grads = loss_and_grads(model, ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # and under autocast
            assert model(input_ids=ids).logits.dtype == torch.bfloat16
    assert torch.equal(logits, expected_logits)
    for name, grad in grads.items():
        assert torch.equal(grad, expected_grads[name]), name
