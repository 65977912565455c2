"""A comparison recommends only a method that learned: beat the majority label (or, for
generation, the base model) beyond its confidence interval."""

import json

import pytest
import tiny

from peftlab.cli import main
from peftlab.comparison.compare_report import summary
from peftlab.comparison.leaderboard import leaderboard

TEST_LABELS = [62, 38]  # majority label: 0.62


def record(method: str, seed: int, correct: int, params: int, variant=None) -> dict:
    """A classification run record with `correct` of 100 test examples right."""
    per_example = [1.0] * correct + [0.0] * (100 - correct)
    return {
        "config": {
            "method": {"name": method},
            "train": {"seed": seed, "lr": 1e-3, "epochs": 1.0},
            "task": {"name": "classification"},
        },
        "variant": variant,
        "before": {"accuracy": 0.55, "f1": 0.5},
        "after": {"accuracy": correct / 100, "f1": correct / 100, "per_example": per_example},
        "train": {
            "trainable_params": params,
            "trainable_percent": params / 1e4,
            "runtime_s": 10.0,
            "peak_memory_mb": 100.0,
            "samples_per_s": 40.0,
        },
        "adapter": {"size_mb": params / 1e6},
        "data": {"label_counts": {"test": TEST_LABELS}, "sizes": {"train": 400, "validation": 100}},
        "run_dir": f"/runs/{method}-seed{seed}",
    }


def test_nothing_learned_recommends_nothing_and_says_what_to_change():
    board = leaderboard([record("prompt", 0, 62, 10), record("lora", 0, 61, 500)], [])
    advice = board["recommendation"]
    assert advice["method"] is None and advice["best"] is None
    assert advice["text"].startswith("None: no method beat the majority label")
    assert "400 training examples" in advice["text"] and "--train-samples" in advice["text"]
    assert {e["method"] for e in advice["not_learned"]} == {"prompt", "lora"}
    assert all(not front for front in board["pareto"].values())
    text = summary(board)
    assert "Recommendation: None" in text and "Best accuracy" not in text
    assert "prompt: accuracy 0.6200 (95% CI" in text


def test_only_the_methods_that_learned_are_ranked_and_on_the_pareto_fronts():
    records = [record("lora", 0, 90, 500), record("prompt", 0, 63, 10), record("ia3", 0, 60, 50)]
    board = leaderboard(records, [])
    advice = board["recommendation"]
    assert advice["method"] == "lora" and advice["best"] == "lora"
    assert advice["text"].startswith("Best accuracy: lora, 0.9000")
    # prompt is cheaper and its mean is above the majority label, but within its interval
    assert [e["method"] for e in advice["not_learned"]] == ["prompt", "ia3"]
    fronts = {cost: front for cost, front in board["pareto"].items() if front}
    assert fronts == {key: ["lora"] for key in ("trainable_params", "peak_memory_mb", "train_s")}
    assert "Not learned, so not ranked, recommended or on the Pareto fronts: prompt" in summary(
        board
    )


def test_tuned_settings_below_their_defaults_on_test_are_flagged():
    records = [
        record("lora", 0, 85, 500, variant="tuned"),
        record("lora", 0, 90, 500, variant="default"),
    ]
    advice = leaderboard(records, [])["recommendation"]
    assert advice["method"] == "lora"
    (found,) = advice["tuning_disagreed"]
    assert found == {"method": "lora", "tuned": 0.85, "default": 0.9, "validation_samples": 100}
    assert "validation (100 examples) and test disagreed" in advice["text"]


def test_generation_must_beat_the_base_model():
    runs = []
    for method, after in (("lora", 0.30), ("ia3", 0.20)):
        for seed in (0, 1, 2):
            r = record(method, seed, 50, 100)
            r["config"]["task"]["name"] = "summarization"
            r["before"] = {"rouge1": 0.2, "rouge2": 0.1, "rougeL": 0.2, "gen_len": 9}
            r["after"] = {
                "rouge1": after + seed / 1000,
                "rouge2": 0.1,
                "rougeL": 0.2,
                "rougeLsum": 0.2,
            }
            r["after"]["gen_len"] = 8
            r["data"] = {"sizes": {"train": 200, "validation": 20}}
            runs.append(r)
    advice = leaderboard(runs, [])["recommendation"]
    assert advice["method"] == "lora"
    assert [e["method"] for e in advice["not_learned"]] == ["ia3"]
    assert "the base model (0.2000)" in advice["not_learned"][0]["reason"]


@pytest.mark.long
def test_a_tiny_comparison_that_learns_nothing_recommends_nothing(
    tiny_llama, sentiment_csv, tmp_path
):
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "lora", *tiny.where(tiny_llama, sentiment_csv, out)]
    argv += ["--lr", "1e-7", "--epochs", "1", "--batch-size", "16", "--precision", "fp32"]
    assert main([*argv, *tiny.ALL_ROWS]) == 0
    board = json.loads((out / "compare.json").read_text())
    assert board["recommendation"]["method"] is None
    assert board["recommendation"]["not_learned"][0]["method"] == "lora"
    md, page = (out / "compare.md").read_text(), (out / "compare.html").read_text()
    assert "Recommendation: None: no method beat the majority label" in md
    assert '<p id="recommendation"><strong>None: no method beat the majority label' in page
