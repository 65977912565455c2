"""LoRA's options: rank-stabilized scaling (--rslora) and LoRA+ (--lora-plus-ratio), each
a config field recorded in run.json and refused on methods that would ignore it."""

import json
import math

import pytest
import tiny
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
