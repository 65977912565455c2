"""LoRA's options: rank-stabilized scaling (--rslora) and LoRA+ (--lora-plus-ratio), each
a config field recorded in run.json and refused on methods that would ignore it."""

import json
import math

import pytest
import tiny
import torch
from builds import Built

from peftlab.cli import main
from peftlab.methods.lora import lora_plus
from peftlab.training.loop import make_optimizer


def lora_scalings(model) -> set[float]:
    return {m.scaling["default"] for m in model.modules() if hasattr(m, "lora_A")}


@pytest.mark.parametrize("rslora", [False, True])
def test_rslora_scales_by_the_square_root_of_the_rank(tiny_llama, sentiment_csv, rslora):
    built = Built(tiny_llama, sentiment_csv, "lora", lora_r=4, lora_alpha=8, rslora=rslora)
    assert lora_scalings(built.model) == {8 / math.sqrt(4) if rslora else 8 / 4}


def test_lora_plus_gives_the_b_matrices_a_higher_rate(tiny_llama, sentiment_csv):
    built = Built(tiny_llama, sentiment_csv, "dora", lora_plus_ratio=16.0)
    built.cfg.train.lr = 1e-3
    optimizer = make_optimizer(built.model, built.cfg.train, lora_plus(built.cfg.method))
    names = {id(p): n for n, p in built.model.named_parameters()}
    for group in optimizer.param_groups:
        in_b = {"lora_B" in names[id(p)] for p in group["params"]}
        assert len(in_b) == 1  # A and B never share a rate
        assert group["lr"] == pytest.approx(1.6e-2 if in_b.pop() else 1e-3)
    assert lora_plus(Built(tiny_llama, sentiment_csv, "lora").cfg.method) is None  # 0: off


def test_a_run_records_both_and_other_methods_refuse_them(
    tiny_llama, sentiment_csv, tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["run", *tiny.where(tiny_llama, sentiment_csv, out), "--epochs", "1", *tiny.ALL_ROWS]
    assert main([*args, "--rslora", "--lora-plus-ratio", "16"]) == 0
    method = json.loads((out / "run.json").read_text())["config"]["method"]
    assert method["rslora"] is True and method["lora_plus_ratio"] == 16
    capsys.readouterr()
    assert main([*args, "--method", "ia3", "--lora-plus-ratio", "16"]) == 2
    err = capsys.readouterr().err
    assert "method.lora_plus_ratio" in err and "only lora, dora, qlora" in err


def test_eva_starts_each_a_from_the_training_inputs_principal_directions(tiny_llama, sentiment_csv):
    from peftlab.methods.lora import eva_start
    from peftlab.training.hooks import RunStart

    built = Built(tiny_llama, sentiment_csv, "lora", lora_r=4, lora_init="eva")
    rows = built.task.encode(built.dataset.splits["train"][:64])
    batches = [built.task.collate(rows[i : i + 16]) for i in range(0, 64, 16)]
    eva_start(built.model, RunStart(10, lambda: batches, built.task.loss))
    pairs = [m for m in built.model.modules() if hasattr(m, "lora_A") and m.lora_A]
    ranks = [m.r["default"] for m in pairs]
    assert sum(ranks) == 4 * len(pairs) and len(set(ranks)) > 1  # the budget moved
    for module in pairs:
        a = module.lora_A["default"].weight  # rows: orthonormal singular vectors
        torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0]), atol=1e-4, rtol=0)
        assert not module.lora_B["default"].weight.any()  # still the base model's outputs


def test_gaussian_init_draws_a_with_std_one_over_the_rank(tiny_llama, sentiment_csv):
    built = Built(tiny_llama, sentiment_csv, "lora", lora_r=8, lora_init="gaussian")
    a = torch.cat([m.lora_A["default"].weight.flatten() for m in built.model.modules()
                   if hasattr(m, "lora_A") and m.lora_A])  # fmt: skip
    assert a.std().item() == pytest.approx(1 / 8, rel=0.1)


def test_lora_init_is_recorded_and_refused_on_other_methods(
    tiny_llama, sentiment_csv, tmp_path, capsys
):
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, tmp_path / "run"), *tiny.ALL_ROWS]
    assert main([*argv, "--lora-init", "eva", "--epochs", "1"]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["method"]["lora_init"] == "eva"
    assert main([*argv, "--method", "ia3", "--lora-init", "gaussian"]) == 2
    assert "method.lora_init" in capsys.readouterr().err


def test_lora_fa_keeps_a_where_it_started_and_trains_b(tiny_llama, sentiment_csv, tmp_path):
    from safetensors.torch import load_file

    from peftlab.methods.lora import lora_fa_optimizer

    built = Built(tiny_llama, sentiment_csv, "lora", lora_fa=True)
    built.cfg.train.lr = 1e-2
    start = {n: p.detach().clone() for n, p in built.model.named_parameters() if "lora_" in n}
    optimizer = lora_fa_optimizer(built.cfg.method, built.model, built.cfg.train)
    assert not any(p.requires_grad for n, p in built.model.named_parameters() if "lora_A" in n)
    built.model.train()
    for step in range(4):
        built.task.loss(built.model, built.batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 1:  # what a checkpoint keeps and a resume loads (its state is by name)
            optimizer.load_state_dict(optimizer.state_dict())
    for name, p in built.model.named_parameters():
        if "lora_A" in name:
            assert torch.equal(p, start[name]), name
        elif "lora_B" in name:
            assert not torch.equal(p, start[name]), name
    # A run: recorded, and saved with its A (plain peft needs both).
    out = tmp_path / "run"
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), "--lora-fa", *tiny.ALL_ROWS]
    assert main([*argv, "--epochs", "2", "--eval-every", "4"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["method"]["lora_fa"] is True
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in saved) and any("lora_B" in k for k in saved)


def test_lora_fa_refuses_what_it_cannot_keep(tiny_llama, sentiment_csv, tmp_path, capsys):
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, tmp_path / "run"), "--lora-fa"]
    assert main([*argv, "--method", "dora"]) == 2
    assert "method.lora_fa" in capsys.readouterr().err
    assert main([*argv, "--lora-plus-ratio", "16"]) == 2
    assert "drop --lora-plus-ratio or --lora-fa" in capsys.readouterr().err
    assert main([*argv, "--method", "ia3"]) == 2
    assert "only lora, dora, qlora take it" in capsys.readouterr().err


def training_batches(built):
    items = built.task.encode(built.dataset.splits["train"])

    def batches(size: int = 8) -> list[dict]:
        return [built.task.collate(items[i : i + size]) for i in range(0, len(items), size)]

    return batches


@pytest.mark.parametrize(
    ("arch", "init"),
    [
        *[("llama", "pissa"), ("llama", "olora"), ("gpt2", "pissa"), ("t5", "pissa")],
        *[("llama", "corda"), ("gpt2", "corda"), ("t5", "corda")],
    ],
)
def test_residual_inits_keep_the_contract_and_save_a_lora_of_the_original_base(
    arch, init, tiny_model, sentiment_csv, tmp_path
):
    """PiSSA, OLoRA and CorDA move part of each base weight into the pair: the switched-off model
    is still exactly the base (the residual plus the initial pair), and the saved adapter is
    a plain LoRA of twice the rank that reproduces the trained model on the original base."""
    from test_contract import (
        disabled_model_equals_base,
        merge_is_exact_or_refused_with_a_reason,
        save_reload_reproduces_outputs,
    )

    from peftlab.methods.residual_init import corda_start
    from peftlab.training.hooks import RunStart

    built = Built(tiny_model(arch), sentiment_csv, "lora", lora_r=4, lora_init=init)
    if init == "corda":  # from the training inputs, before the first step (the loop's start)
        corda_start(built.model, RunStart(10, training_batches(built), built.task.loss))
    stored = {n: p for n, p in built.model.named_parameters() if n.endswith("base_layer.weight")}
    original = dict(built.base.named_parameters())
    assert any(not torch.equal(p, original[n.replace("base_model.model.", "").replace(
        ".base_layer", "")]) for n, p in stored.items())  # fmt: skip  # a residual now
    torch.testing.assert_close(built.logits(built.model), built.logits(built.base))
    built.train_steps()
    expected = built.logits(built.model)
    disabled_model_equals_base(built)
    save_reload_reproduces_outputs(built, expected, tmp_path)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True
    merge_is_exact_or_refused_with_a_reason(built, expected)


def test_residual_inits_are_refused_on_qlora_and_dora(tiny_llama, sentiment_csv, tmp_path, capsys):
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, tmp_path / "run"), "--method", "qlora"]
    assert main([*argv, "--lora-init", "pissa"]) == 2
    assert "method.lora_init" in capsys.readouterr().err
    assert main([*argv[:-1], "dora", "--lora-init", "olora"]) == 2
    assert "starts lora only" in capsys.readouterr().err
    assert main([*argv[:-1], "dora", "--lora-init", "corda"]) == 2
    assert "starts lora only" in capsys.readouterr().err


def test_pissa_and_corda_runs_score_the_true_base_and_their_adapters_predict(
    tiny_llama, sentiment_csv, tmp_path
):
    from peftlab.adapters.inference import Predictor
    from peftlab.adapters.package import open_package

    records = {}
    for init in ("default", "pissa", "corda"):
        out = tmp_path / init
        argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), "--lora-init", init]
        argv += ["--precision", "fp32"]  # bf16 rounds W_res + s B0 A0 unlike W
        # One epoch: what is checked is the base they score and that they predict.
        assert main([*argv, "--epochs", "1", "--lr", "1e-2", *tiny.ALL_ROWS]) == 0
        records[init] = json.loads((out / "run.json").read_text())
    before = [records[i]["before"]["loss"] for i in records]
    assert before[1:] == pytest.approx(before[:2], abs=1e-5)  # the base, not the residual
    assert records["corda"]["forgetting"]["value"] != 0  # measured against the true base
    texts = ["a wonderful film", "a dull, tiresome mess"]
    for init in ("pissa", "corda"):
        predicted = Predictor(open_package(tmp_path / init / "adapter")).predict(texts)
        assert len(predicted) == 2 and all("label" in p for p in predicted)
