"""Forgetting in every run: LM loss change for causal LMs, representation drift for the
others, measured against the base on general text, also for full fine-tuning."""

import json

import pytest
import tiny

from peftlab.cli import main
from peftlab.runner.forgetting import general_texts

TRAIN = ["--epochs", "3", "--lr", "5e-3", "--batch-size", "16", "--precision", "fp32"]


@pytest.fixture(scope="module")
def general(tmp_path_factory):
    rows = [{"text": r["text"] + " and the story"} for r in tiny.sentiment_rows(40, seed=9)]
    return tiny.write_csv(tmp_path_factory.mktemp("general") / "general.csv", rows)


def run_record(model, data, out, *extra) -> dict:
    assert main(["run", *tiny.where(model, data, out), *TRAIN, *tiny.ALL_ROWS, *extra]) == 0
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_causal_lm_forgetting_is_the_lm_loss_change(
    method, tiny_llama, sentiment_csv, general, tmp_path
):
    record = run_record(
        tiny_llama, sentiment_csv, tmp_path / "run", "--method", method,
        "--forgetting-data", str(general), "--forgetting-samples", "16",
    )  # fmt: skip
    f = record["forgetting"]
    assert f["measure"] == "lm_loss_change" and f["texts"] == 16
    assert f["value"] == pytest.approx(f["tuned_loss"] - f["base_loss"], abs=2e-4)
    assert f["value"] != 0  # training moved the model, and full's base was taken before it
    assert "## Forgetting" in (tmp_path / "run" / "report.md").read_text()


def test_encoder_forgetting_is_representation_drift(tiny_bert, sentiment_csv, general, tmp_path):
    record = run_record(
        tiny_bert, sentiment_csv, tmp_path / "run", "--forgetting-data", str(general)
    )
    f = record["forgetting"]
    assert f["measure"] == "representation_drift" and 0 < f["value"] < 1


def test_forgetting_can_be_turned_off(tiny_llama, sentiment_csv, tmp_path):
    record = run_record(tiny_llama, sentiment_csv, tmp_path / "run", "--forgetting-samples", "0")
    assert "forgetting" not in record


def test_the_built_in_general_text_is_the_other_corpus():
    news = general_texts("rotten_tomatoes", None, 5)
    reviews = general_texts("bbc_news", None, 5)
    assert len(news) == len(reviews) == 5
    assert sum(map(len, news)) > 5 * sum(map(len, reviews))  # articles vs critic snippets
    assert news == general_texts("my_reviews.csv", None, 5)  # the same texts every run


@pytest.mark.parametrize(("arch", "head"), [("llama", "label_words"), ("bert", "linear")])
def test_batched_scores_equal_one_text_at_a_time(arch, head, tiny_model):
    """Texts of different lengths scored together, padded: the same per-text values as
    each scored alone (the padding is masked and never scored)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from peftlab.runner import forgetting

    path = tiny_model(arch)
    loader = AutoModelForCausalLM if arch == "llama" else AutoModel
    model = loader.from_pretrained(path).eval()
    info = type("Info", (), {"head": head, "kind": "causal_lm" if arch == "llama" else "encoder"})
    rows = [[5, 9, 11, 3, 7, 2, 8][:n] for n in (7, 2, 5, 3, 6, 4, 7, 2, 5, 3)]
    together = forgetting.scores(model, rows, info, "fp32", base=False)
    alone = torch.stack([forgetting.scores(model, [r], info, "fp32", base=False)[0] for r in rows])
    assert together.shape[0] == len(rows)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
