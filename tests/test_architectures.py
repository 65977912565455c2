"""The tutorials' own architectures end to end through the CLI (GPT-2 with its Conv1D
layers, DistilBERT), and the README's architecture x method table kept current."""

import json

import pytest
import tiny
import torch

from peftlab.cli import main

QUICK = ["--train-samples", "64", "--validation-samples", "16", "--test-samples", "32"]


def run_cli(model, data, out, *extra) -> dict:
    assert main(["run", *tiny.where(model, data, out), "--precision", "fp32", *extra]) == 0
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize(
    "method", ["lora", "dora", "ia3", "adapter", "prefix", "prompt", "ptuning", "full"]
)
def test_gpt2_runs_every_method(method, tiny_model, sentiment_csv, tmp_path):
    record = run_cli(
        tiny_model("gpt2"), sentiment_csv, tmp_path / "run", "--method", method, *QUICK
    )
    assert record["status"] == "done"
    assert record["train"]["trainable_params"] > 0
    assert (tmp_path / "run" / "adapter" / "peftlab.json").is_file()


def test_gpt2_lora_adapts_its_conv1d_layers_and_merges_exactly(
    tiny_model, sentiment_csv, tmp_path, capsys
):
    record = run_cli(tiny_model("gpt2"), sentiment_csv, tmp_path / "run", *QUICK, "--lr", "1e-2")
    adapter = tmp_path / "run" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    assert {"c_attn", "c_proj", "c_fc"} <= {
        name.split(".")[-1] for name in config["target_modules"]
    }
    assert record["train"]["trainable_params"] > 0
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    assert "largest output difference" in capsys.readouterr().out
    merged = json.loads((tmp_path / "merged" / "peftlab.json").read_text())
    assert merged["merge_check"]["max_abs_diff"] <= 1e-4


def test_seed000_tutorial_gpt2_lora_sequence_classification(tiny_model, sentiment_csv, tmp_path):
    """The GPT-2 tutorial: LoRA on GPT2ForSequenceClassification (a new linear head, pad =
    a real token id), on a tiny random-weight GPT-2 at a rate that suits it; it must learn."""
    record = run_cli(
        tiny_model("gpt2"),
        sentiment_csv,
        tmp_path / "run",
        "--head",
        "linear",
        "--epochs",
        "4",
        "--lr",
        "5e-3",
        "--batch-size",
        "16",
        *tiny.ALL_ROWS,
    )
    assert record["before"]["accuracy"] < 0.7
    # 24 test rows: seeds 0-2 score 0.96, 0.88, 0.92 here; the bound leaves room for the
    # rounding of another CPU's kernels, far above chance.
    assert record["after"]["accuracy"] >= 0.8
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and "score" in saved["modules_to_save"]


def test_distilbert_head_layers_all_train_and_are_saved(tiny_model, sentiment_csv, tmp_path):
    """DistilBERT's head is two new layers (pre_classifier, classifier): both train and are
    saved, so a reloaded adapter predicts what the trained model did."""
    record = run_cli(tiny_model("distilbert"), sentiment_csv, tmp_path / "run", *QUICK)
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert {"pre_classifier", "classifier"} <= set(saved["modules_to_save"])
    assert record["status"] == "done"


def test_a_combination_that_cannot_work_is_one_line(tiny_model, sentiment_csv, tmp_path, capsys):
    argv = ["run", *tiny.where(tiny_model("distilbert"), sentiment_csv, tmp_path / "run")]
    assert main([*argv, "--method", "prefix"]) == 2
    err = capsys.readouterr().err.strip()
    assert "past_key_values" in err and "Traceback" not in err and err.count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_ia3_defaults_come_from_the_model_where_peft_has_none(tiny_model, sentiment_csv):
    from builds import Built

    built = Built(tiny_model("distilbert"), sentiment_csv, "ia3")
    config = built.model.peft_config["default"]
    short = {name.split(".")[-1] for name in config.target_modules}
    assert short == {"k_lin", "v_lin", "lin2"}
    assert {name.split(".")[-1] for name in config.feedforward_modules} == {"lin2"}


def test_adapter_wrapper_exposes_the_wrapped_weight(tiny_model, summary_csv):
    from builds import Built

    built = Built(tiny_model("t5"), summary_csv, "adapter", task="summarization")
    wo = built.model.encoder.block[0].layer[1].DenseReluDense.wo
    assert wo.weight is wo.base.weight and wo.weight.dtype == torch.float32


def test_readme_architecture_table_has_every_method_and_case():
    """Its rows and columns: each cell is checked by the contract test that builds it."""
    from builds import CASES, NAMES
    from support_table import README, case_label, readme_outcomes

    from peftlab.methods.registry import METHODS

    outcomes = readme_outcomes(README.read_text(encoding="utf-8"))
    methods = list(dict.fromkeys(method for method, _ in outcomes))
    labels = list(dict.fromkeys(label for _, label in outcomes))
    cases = sorted(CASES, key=lambda c: list(NAMES).index(c[0]))
    stale = "README's architecture x method table is stale: run python tests/support_table.py"
    assert methods == list(METHODS), stale
    assert labels == [case_label(*case) for case in cases], stale
    assert "no note" not in outcomes.values(), "a refused cell without its message"


def test_inputs_longer_than_learned_positions_are_refused(tiny_model, sentiment_csv, capsys):
    argv = ["run", "--model", str(tiny_model("gpt2")), "--dataset", str(sentiment_csv)]
    assert main([*argv, "--max-length", "512"]) == 2
    err = capsys.readouterr().err
    assert "model.max_length = 512" in err and "has 256 positions" in err
    assert main([*argv, "--max-length", "200", "--task", "summarization"]) == 2
    assert "model.max_length + task.max_target_length = 264" in capsys.readouterr().err
