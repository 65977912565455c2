"""AdaLoRA's rank budget schedule, driven by peftlab's loop: the phases are set from the
run's step count, ranks are pruned to the target budget by the end, the orthogonality term
joins the loss, and the saved adapter (ranks cut to what was kept) reloads in plain peft."""

import json

import pytest
import tiny
import torch

from peftlab.cli import main
from peftlab.methods.adalora import orthogonality

RUN = ["--method", "adalora", "--epochs", "3", "--batch-size", "16", "--lr", "1e-2"]


def test_a_run_prunes_the_ranks_to_the_target_budget(tiny_llama, sentiment_csv, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), *RUN, *tiny.ALL_ROWS]
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    steps = record["train"]["steps"]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["total_step"] == steps
    assert (config["tinit"], config["tfinal"]) == (int(0.1 * steps), int(0.2 * steps))
    kept = [sum(mask) for mask in config["rank_pattern"].values()]
    assert sum(kept) <= config["target_r"] * len(kept) < config["init_r"] * len(kept)
    assert len(set(kept)) > 1, "the budget went to some weights more than others"
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    plain = PeftModel.from_pretrained(base, out / "adapter")
    ranks = {m.r["default"] for m in plain.modules() if hasattr(m, "lora_E")}
    assert ranks and max(ranks) <= config["init_r"]


def test_the_orthogonality_term_is_zero_only_for_orthonormal_factors(tiny_llama, sentiment_csv):
    from builds import Built

    built = Built(tiny_llama, sentiment_csv, "adalora")
    assert orthogonality(built.model) > 0  # peft draws A at random
    for name, p in built.model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            rows, cols = p.shape
            with torch.no_grad():  # P^T P = I and Q Q^T = I
                p.copy_(torch.eye(rows, cols))
    assert float(orthogonality(built.model)) == pytest.approx(0.0, abs=1e-6)


def test_a_schedule_that_leaves_no_budget_phase_is_one_line(
    tiny_llama, sentiment_csv, tmp_path, capsys
):
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, tmp_path / "run"), *RUN, *tiny.ALL_ROWS]
    assert main([*argv, "--peft-options", "tinit=40,tfinal=40"]) == 2
    err = capsys.readouterr().err
    assert "method.peft_options" in err and "tinit=40, tfinal=40" in err and "steps" in err
    assert main([*argv, "--peft-options", "total_step=5"]) == 2
    assert "the run's step count sets it" in capsys.readouterr().err
