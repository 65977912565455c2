"""`peftlab compare` on a tiny model: runs, leaderboard, reports, resumption, failures."""

import json

import pytest
import tiny

from peftlab.cli import main


@pytest.mark.long
def test_compare_runs_methods_and_seeds_then_reuses_them(
    tiny_llama, sentiment_csv, tmp_path, capsys
):
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--methods",
        "lora,bitfit,full",
        "--seeds",
        "0,1",
        *tiny.where(tiny_llama, sentiment_csv, out),
        "--template",
        "review: {text} sentiment:",
        "--epochs",
        "2",
        "--lr",
        "5e-3",
        "--batch-size",
        "16",
        *tiny.ALL_ROWS,
    ]
    assert main(argv) == 0
    board = json.loads((out / "compare.json").read_text())
    rows = {row["method"]: row for row in board["rows"]}
    assert set(rows) == {"lora", "full"}
    for row in rows.values():
        assert row["seeds"] == [0, 1]
        assert row["accuracy"] > row["base"] and row["gain"] > 0
        assert row["trainable_params"] > 0 and row["adapter_mb"] > 0 and row["train_s"] > 0
    assert rows["lora"]["trainable_params"] < rows["full"]["trainable_params"]
    # BitFit refuses a bias-free llama: recorded, and the other methods went on.
    assert [(f["method"], f["seed"]) for f in board["failures"]] == [("bitfit", 0), ("bitfit", 1)]
    assert "no bias terms" in board["failures"][0]["error"]
    # One shared base evaluation: every run reports the same "before".
    befores = {
        json.dumps(json.loads((out / d / "run.json").read_text())["before"])
        for d in ("lora-seed0", "lora-seed1", "full-seed0", "full-seed1")
    }
    assert len(befores) == 1
    html = (out / "compare.html").read_text()
    assert html.count("<tr>") == 3 and html.count("data:image/png;base64,") == 4  # + pareto
    assert "| lora |" in (out / "compare.md").read_text()

    capsys.readouterr()
    assert main(argv) == 0  # a rerun keeps every finished run
    assert capsys.readouterr().out.count("done already, kept") == 4

    # Report only, from existing run directories.
    again = tmp_path / "again"
    assert (
        main(["compare", str(out / "lora-seed0"), str(out / "full-seed1"), "--out", str(again)])
        == 0
    )
    board = json.loads((again / "compare.json").read_text())
    assert {row["method"] for row in board["rows"]} == {"lora", "full"}


def test_compare_with_nothing_to_do_is_one_line(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path)]) == 2
    assert "nothing to compare" in capsys.readouterr().err


@pytest.mark.long
def test_compare_summarization_gives_rouge_and_cost_columns(tiny_llama, tmp_path):
    data = tiny.write_csv(tmp_path / "sum.csv", tiny.summary_rows(160))
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--task",
        "summarization",
        "--methods",
        "lora,full",
        *tiny.where(tiny_llama, data, out),
        "--epochs",
        "2",
        "--lr",
        "1e-2",
        "--batch-size",
        "16",
        "--max-new-tokens",
        "6",
    ]
    assert main(argv) == 0
    board = json.loads((out / "compare.json").read_text())
    assert board["task"] == "summarization" and board["metric"] == "rouge1"
    assert {row["method"] for row in board["rows"]} == {"lora", "full"}
    for row in board["rows"]:
        assert row["gain"] > 0 and row["rouge2"] >= 0 and row["gen_len"] > 0
    table = (out / "compare.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    for title in ("test rouge1", "rougeL", "rougeLsum", "trainable params", "train s", "peak MB"):
        assert title in header
    assert "Base model test rouge1" in table


def test_runs_of_different_tasks_are_not_ranked_together(tiny_llama, sentiment_csv, tmp_path):
    common = ["--epochs", "1", "--train-samples", "32", "--test-samples", "8"]
    common += ["--validation-samples", "8", "--max-new-tokens", "2"]
    for task in ("classification", "causal_lm"):
        argv = ["run", *tiny.where(tiny_llama, sentiment_csv, tmp_path / task), *common]
        assert main([*argv, "--task", task]) == 0
    argv = ["compare", str(tmp_path / "classification"), str(tmp_path / "causal_lm")]
    assert main([*argv, "--out", str(tmp_path / "cmp")]) == 2
