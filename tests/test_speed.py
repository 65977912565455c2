"""The speed work keeps results right: fast dropout, precision choice, no wasted validation,
the fused optimizer."""

import json

import pytest
import tiny
import torch
from torch import nn

from peftlab.cli import main
from peftlab.config import TrainArgs
from peftlab.training import precision
from peftlab.training.fast_dropout import FastDropout, use_fast_dropout
from peftlab.training.loop import fused_kernel_fits, make_optimizer


def test_fast_dropout_has_torch_dropouts_distribution():
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    y = FastDropout(0.1)(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert abs(y.mean().item() - 1.0) < 0.005  # the expectation is kept


def test_fast_dropout_gradient_follows_the_mask():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 33, requires_grad=True)
    y = FastDropout(0.3)(x)
    y.backward(torch.ones_like(y))
    kept = y.detach() != 0
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7))


def test_fast_dropout_is_seeded_by_torch_and_off_in_eval():
    layer = FastDropout(0.5)
    x = torch.randn(64, 64)
    torch.manual_seed(1)
    first = layer(x)
    torch.manual_seed(1)
    assert torch.equal(layer(x), first)  # a resumed run (torch RNG restored) draws the same
    assert not torch.equal(layer(x), first)
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(FastDropout(0.0)(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))


def test_fast_dropout_compiles_in_one_graph_with_numpys_masks():
    """Under torch.compile the masks come from the custom op (one graph, no break): the
    same rate and scale, the gradient through the same mask, reproducible from torch's
    seed, and not one mask reused by two dropouts of the same input."""
    torch._dynamo.reset()

    def two_dropouts(x):
        return layer(x), layer(x)

    layer = FastDropout(0.25)
    compiled = torch.compile(two_dropouts, fullgraph=True, dynamic=True)
    x = torch.randn(256, 96, requires_grad=True)
    torch.manual_seed(3)
    first, second = compiled(x)
    kept = first.detach() != 0
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.01
    assert torch.allclose(first[kept], x[kept] / 0.75)
    assert not torch.equal(kept, second.detach() != 0)  # each call its own mask
    first.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    torch.manual_seed(3)
    assert torch.equal(compiled(x)[0], first)  # a resumed run draws the same masks
    assert compiled(torch.randn(8, 5, requires_grad=True))[0].shape == (8, 5)


def test_use_fast_dropout_swaps_every_plain_dropout():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.ModuleDict({"a": nn.Dropout(0.05)}))
    model.eval()
    assert use_fast_dropout(model) == 2
    assert isinstance(model[1], FastDropout) and model[1].p == 0.2
    assert isinstance(model[2]["a"], FastDropout) and model[2]["a"].p == 0.05
    assert not model[1].training  # the mode is kept
    assert use_fast_dropout(model) == 0  # already fast


def test_precision_resolves_auto_from_the_hardware(monkeypatch):
    assert precision.resolve("fp32") == "fp32"
    assert precision.resolve("bf16") == "bf16"
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    assert precision.resolve("auto") == "bf16"
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    assert precision.resolve("auto") == "fp32"


def test_cpu_flags_are_read_on_linux():
    flags = precision.cpu_flags()
    assert isinstance(flags, set)
    if flags:  # Linux: every x86/arm CPU lists some flags
        assert precision.native_bf16() == bool(flags & set(precision.NATIVE_CPU_FLAGS)) or (
            torch.cuda.is_available()
        )


@pytest.mark.parametrize("eval_every", ["0", "4"])
def test_a_lone_final_validation_is_skipped(tiny_llama, sentiment_csv, tmp_path, eval_every):
    out = tmp_path / "run"
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), "--batch-size", "16"]
    argv += ["--eval-every", eval_every, "--train-samples", "96", "--test-samples", "16"]
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["train"]["precision"] in ("fp32", "bf16")  # auto was resolved
    evals = record["train"]["evals"]
    if eval_every == "0":  # one epoch, validated once at its end: nothing to select
        assert evals == [] and record["train"]["best_step"] is None
        assert "none (a single final validation" in (out / "report.md").read_text()
    else:  # validations at step 4 and at the end (step 6) choose between weights
        assert [e["step"] for e in evals] == [4, 6]


def test_bf16_frozen_weights_are_copies_put_back_untouched():
    from peftlab.training.precision import bf16_frozen_weights

    model = nn.Module()
    model.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
    model.head = nn.Linear(4, 2)  # outside the layer blocks: kept
    model.layers[0].requires_grad_(False)
    frozen, trained = model.layers[0].weight, model.layers[1].weight
    saved = frozen.detach().clone()
    with bf16_frozen_weights(model, "bf16") as swapped:
        assert swapped == 1
        assert model.layers[0].weight.dtype == torch.bfloat16
        assert model.layers[1].weight is trained and model.head.weight.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.layers[0](torch.randn(2, 4))
    assert model.layers[0].weight is frozen and torch.equal(frozen, saved)
    with bf16_frozen_weights(model, "fp32") as swapped:
        assert swapped == 0


def test_adamw_steps_with_the_fused_kernel_and_lands_where_the_default_does():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2)) for _ in "ab"]
    models[1].load_state_dict(models[0].state_dict())
    args = TrainArgs(lr=1e-2)
    fused = make_optimizer(models[0], args)
    assert all(group["fused"] for group in fused.param_groups)
    reference = make_optimizer(models[1], args).param_groups  # the same groups and rates
    unfused = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in reference]
    plain = torch.optim.AdamW(unfused, lr=1e-2, foreach=True)
    batch = torch.randn(16, 8)
    for _ in range(5):
        for model, optimizer in zip(models, (fused, plain), strict=True):
            model(batch).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not fused_kernel_fits([torch.zeros(2, device="meta")])  # elsewhere: the default


def test_label_word_logits_come_from_the_heads_rows_alone(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftlab.tasks.classification import LabelWordHead, label_word_rows, next_token_logits

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    head = LabelWordHead(tokenizer, ["positive", "negative"])
    ids = torch.randint(0, model.config.vocab_size, (3, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    full = next_token_logits(model, ids, batch["attention_mask"])[:, head.token_ids]
    full.sum().backward()
    expected_grad, model.lm_head.weight.grad = model.lm_head.weight.grad.clone(), None
    lm_head = model.lm_head
    logits = head.logits(model, batch)
    logits.sum().backward()
    assert model.lm_head is lm_head  # put back
    assert torch.allclose(logits, full.float(), atol=1e-6)
    assert torch.allclose(model.lm_head.weight.grad, expected_grad, atol=1e-6)
    with label_word_rows(nn.Sequential(), [1]) as only_labels:  # no LM head: nothing changes
        assert not only_labels


@pytest.mark.parametrize("users", [None, "32"])
def test_onednn_primitive_cache_is_sized_for_a_runs_shapes_unless_the_user_sized_it(users):
    import os
    import subprocess
    import sys

    import peftlab

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if users:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = users
    read = "import os, peftlab; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    out = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == (users or str(peftlab.ONEDNN_PRIMITIVE_CACHES))
    assert peftlab.ONEDNN_PRIMITIVE_CACHES >= 256  # 64 rebuilt MiniLM's primitives every step
