"""End-to-end `peftlab run` on tiny in-process models and a local CSV."""

import json
from pathlib import Path

import pytest
import tiny
import torch

from peftlab.cli import main

RECORD_KEYS = {
    "before": {"accuracy", "f1", "loss", "runtime_s", "samples_per_s", "steps_per_s"},
    "train": {
        "runtime_s",
        "samples_per_s",
        "steps_per_s",
        "peak_memory_mb",
        "trainable_params",
        "total_params",
        "trainable_percent",
        "history",
    },
    "adapter": {"path", "size_mb"},
    "environment": {
        "packages",
        "python",
        "cpu",
        "seed",
        "model_sha256",
        "data_sha256",
        "threads",
    },
}


def run_cli(model, data, out, *extra):
    """Run on the whole tiny dataset; later flags (extra) override the earlier ones."""
    args = [
        "run",
        *tiny.where(model, data, out),
        "--batch-size",
        "16",
        "--eval-every",
        "10",
        "--epochs",
        "3",
        "--lr",
        "5e-3",
        *tiny.ALL_ROWS,
        *extra,
    ]
    assert main(args) == 0
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_label_word_run_on_tiny_llama(tiny_llama, sentiment_csv, tmp_path, method):
    record = run_cli(
        tiny_llama,
        sentiment_csv,
        tmp_path / "run",
        "--method",
        method,
        "--template",
        "review: {text} sentiment:",
    )
    for section, keys in RECORD_KEYS.items():
        assert keys <= set(record[section]), section
    assert record["environment"]["threads"]["threads"] == torch.get_num_threads()
    assert record["after"].keys() >= RECORD_KEYS["before"]
    assert record["status"] == "done"
    assert record["config"]["method"]["name"] == method
    assert record["data"]["label_names"] == ["negative", "positive"]
    # A separable toy task: training must beat the random tiny model clearly.
    assert record["after"]["accuracy"] >= 0.9 > record["before"]["accuracy"]
    assert record["train"]["history"] and record["train"]["evals"]
    if method == "lora":
        assert 0 < record["train"]["trainable_percent"] < 50
    else:
        assert record["train"]["trainable_percent"] == 100
    assert (tmp_path / "run" / "report.md").stat().st_size > 0
    for name in ("loss.png", "before_after.png"):
        assert_drawn(tmp_path / "run" / name)
    assert not (tmp_path / "run" / "checkpoint").exists()


def assert_drawn(path) -> None:
    """A plot of the expected size with something drawn on it (not blank)."""
    from PIL import Image

    image = Image.open(path).convert("L")
    assert image.width >= 500 and image.height >= 350, image.size
    assert len(set(image.getdata())) > 20  # lines, text and antialiasing: many grey levels
    assert image.getextrema() == (0, 255) or image.getextrema()[0] < 100  # dark ink on white


def test_plots_are_titled_with_method_model_data_and_size(
    tiny_llama, sentiment_csv, tmp_path, monkeypatch
):
    """Read back through matplotlib's own objects: titles, labelled axes, integer step
    ticks, validation points on the loss curve, legends outside the axes."""
    from peftlab.runner import report

    record = run_cli(tiny_llama, sentiment_csv, tmp_path / "run", "--validations", "2")
    drawn = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: drawn.update({path.name: fig}))
    report.plot_loss(record, tmp_path / "loss.png")
    report.plot_bars(record, tmp_path / "before_after.png")
    name = Path(record["config"]["model"]["name"]).name
    for file, split in (("loss.png", "train"), ("before_after.png", "test")):
        (ax,) = drawn[file].axes
        n = record["data"]["sizes"][split]
        assert ax.get_title() == f"lora on {name}, sentiment.csv: {n} {split} examples"
        assert ax.get_ylabel() and ax.get_legend() is None and drawn[file].legends
    loss_ax = drawn["loss.png"].axes[0]
    assert loss_ax.get_xlabel() == "optimizer step"
    assert all(float(t).is_integer() for t in loss_ax.get_xticks())
    validation = [line for line in loss_ax.get_lines() if line.get_label() == "validation loss"]
    assert list(validation[0].get_xdata()) == [e["step"] for e in record["train"]["evals"]]


def test_encoder_linear_head_adapter_loads_in_plain_peft(tiny_bert, sentiment_csv, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # A random tiny BERT needs a bolder rate than the default to move its CLS features.
    # fp32: plain peft below scores in fp32 and must reproduce the run's score exactly (the
    # 32-wide random model is also far more sensitive to bf16 rounding than a real one).
    record = run_cli(
        tiny_bert,
        sentiment_csv,
        tmp_path / "run",
        "--lr",
        "3e-3",
        "--epochs",
        "12",
        "--precision",
        "fp32",
    )
    assert record["after"]["accuracy"] >= max(0.8, record["before"]["accuracy"] + 0.2)
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    manifest = json.loads((adapter / "peftlab.json").read_text())
    assert manifest["label_names"] == ["negative", "positive"] and manifest["head"] == "linear"

    # The classification head travels with the adapter: plain peft reproduces the test score.
    from peftlab.config import DataArgs
    from peftlab.data.sources import load

    test = load(
        DataArgs(name=str(sentiment_csv), train_samples=0, validation_samples=0, test_samples=0)
    ).splits["test"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model = PeftModel.from_pretrained(base, adapter).eval()
    inputs = tokenizer([ex.text for ex in test], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits
        with model.disable_adapter():
            bare = model(**inputs).logits
    gold = torch.tensor([ex.label for ex in test])
    accuracy = (logits.argmax(-1) == gold).float().mean().item()
    assert accuracy == pytest.approx(record["after"]["accuracy"])
    assert not torch.allclose(logits, bare)


def test_rerun_into_same_dir_with_other_config_is_refused(
    tiny_llama, sentiment_csv, tmp_path, capsys
):
    run_cli(tiny_llama, sentiment_csv, tmp_path / "run", "--max-steps", "2")
    code = main(
        [
            "run",
            *tiny.where(tiny_llama, sentiment_csv, tmp_path / "run"),
            "--lr",
            "1e-3",
        ]
    )
    assert code == 2
    assert "--resume" in capsys.readouterr().err


def test_target_modules_matching_nothing_is_refused_before_anything_runs(
    tiny_llama, sentiment_csv, tmp_path, capsys
):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            *tiny.where(tiny_llama, sentiment_csv, out),
            "--target-modules",
            "qkv_proj",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "method.target_modules" in err and "q_proj" in err
    assert not out.exists()
