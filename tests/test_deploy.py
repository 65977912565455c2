"""Adapters as artifacts: manifest checks, `peftlab predict`, `peftlab merge`."""

import json
import shutil

import pytest
import tiny
import torch

from peftlab.cli import main

TRAIN = ["--epochs", "2", "--lr", "5e-3", "--batch-size", "16", *tiny.ALL_ROWS]


def train(model, data, out, *extra) -> object:
    assert main(["run", *tiny.where(model, data, out), *TRAIN, *extra]) == 0
    return out / "adapter"


@pytest.fixture(scope="module")
def llama_adapter(tiny_llama, sentiment_csv, tmp_path_factory):
    return train(tiny_llama, sentiment_csv, tmp_path_factory.mktemp("llama") / "run")


@pytest.fixture(scope="module")
def bert_adapter(tiny_bert, sentiment_csv, tmp_path_factory):
    return train(tiny_bert, sentiment_csv, tmp_path_factory.mktemp("bert") / "run")


def predict(capsys, *argv) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def error_of(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


def test_predict_labels_with_probabilities(llama_adapter, capsys):
    texts = ["good great fun", "awful boring dull"]
    results = predict(capsys, "--adapter", str(llama_adapter), *texts)
    assert [r["text"] for r in results] == texts
    assert [r["label"] for r in results] == ["positive", "negative"]
    for r in results:
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    base = predict(capsys, "--adapter", str(llama_adapter), "--no-adapter", *texts)
    assert base[0]["probabilities"] != results[0]["probabilities"]


def test_predict_merges_an_exact_method_and_predicts_the_same(llama_adapter, capsys):
    texts = ["good great fun", "awful boring dull", "a film", "fun but dull and long"]
    merged = predict(capsys, "--adapter", str(llama_adapter), *texts)
    kept = predict(capsys, "--adapter", str(llama_adapter), "--no-merge", *texts)
    for a, b in zip(merged, kept, strict=True):
        assert a["label"] == b["label"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-2)  # bf16 sums
    from peftlab.adapters.inference import Predictor
    from peftlab.adapters.package import open_package

    assert Predictor(open_package(llama_adapter), merged=True).merged


def test_predict_matches_the_runs_own_test_evaluation(bert_adapter, sentiment_csv, tmp_path):
    record = json.loads((bert_adapter.parent / "run.json").read_text())
    from peftlab.config import DataArgs
    from peftlab.data.sources import load

    data = load(
        DataArgs(name=str(sentiment_csv), train_samples=0, validation_samples=0, test_samples=0)
    )
    rows = [{"text": ex.text} for ex in data.splits["test"]]
    tiny.write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    argv = ["predict", "--adapter", str(bert_adapter), "--input", str(tmp_path / "in.csv")]
    assert main([*argv, "--output", str(out)]) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    gold = [data.label_names[ex.label] for ex in data.splits["test"]]
    accuracy = sum(r["label"] == g for r, g in zip(results, gold, strict=True)) / len(gold)
    assert accuracy == pytest.approx(record["after"]["accuracy"])


def test_merge_writes_a_model_plain_transformers_loads(llama_adapter, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    capsys.readouterr()
    assert main(["merge", "--adapter", str(llama_adapter), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "largest output difference" in printed
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    manifest = json.loads((out / "peftlab.json").read_text())
    check = manifest["merge_check"]
    assert check["max_abs_diff"] <= 1e-4
    assert check["max_rel_diff"] == check["max_abs_diff"] / check["logit_scale"]


def test_a_wrong_merge_is_refused_and_writes_nothing(llama_adapter, tmp_path, monkeypatch, capsys):
    """The default tolerance lets fp32 rounding through (the test above) but not a merge
    that folded the adapter in wrongly (here: its update applied twice)."""
    from peftlab.adapters import merge as merging

    real_merge = merging.merge_method

    def merged_twice(model, method):
        for module in model.modules():
            if hasattr(module, "lora_B"):
                for weight in module.lora_B.values():
                    weight.weight.data *= 2
        return real_merge(model, method)

    monkeypatch.setattr(merging, "merge_method", merged_twice)
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(llama_adapter), "--out", str(out)]) == 2
    assert "of their scale; tolerance 0.0001); nothing was written" in capsys.readouterr().err
    assert not out.exists()


def test_merge_tolerance_is_relative_to_the_logits_scale():
    """fp32 rounding on logits around 20 (SmolLM2: 1.06e-4) passes the default 1e-4; a
    merge that is 1% off fails at any scale; small logits are compared absolutely."""
    from peftlab.adapters.merge import difference

    logits = 20 * torch.linspace(-1, 1, 50)
    assert difference(logits, logits + 1.06e-4)[2] < 1e-4
    assert difference(logits, logits * 1.01)[2] > 1e-4
    assert difference(logits / 100, logits / 100 * 1.01)[2] > 1e-4
    assert difference(logits / 100, logits / 100 + 2e-4)[2] > 1e-4


def test_merge_of_a_linear_head_model_keeps_the_trained_head(bert_adapter, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["good great fun", "awful boring dull", "the plot was weak and clumsy"]
    expected = [r["label"] for r in predict(capsys, "--adapter", str(bert_adapter), *texts)]
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(bert_adapter), "--out", str(out)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    assert [model.config.id2label[i] for i in logits.argmax(-1).tolist()] == expected


def test_merge_refuses_a_prompt_style_adapter_with_the_reason(
    tiny_llama, sentiment_csv, tmp_path, capsys
):
    adapter = train(
        tiny_llama, sentiment_csv, tmp_path / "run", "--method", "prefix", "--max-steps", "1"
    )
    err = error_of(capsys, "merge", "--adapter", str(adapter), "--out", str(tmp_path / "m"))
    assert "cannot merge prefix" in err and "virtual tokens" in err
    assert not (tmp_path / "m").exists()


def damaged_copy(adapter, tmp_path, damage) -> str:
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    damage(copy)
    return str(copy)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def newer_format(folder):
    manifest = json.loads((folder / "peftlab.json").read_text())
    manifest["format_version"] = 99
    (folder / "peftlab.json").write_text(json.dumps(manifest))


def edit_target_modules(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj"]
    (folder / "adapter_config.json").write_text(json.dumps(config))


WEIGHTS = "adapter_model.safetensors"
DAMAGES = {
    "edited adapter config": (edit_target_modules, "adapter_config.json is damaged"),
    "no manifest": (  # without adapter_config.json either: not a plain peft folder
        lambda f: [(f / n).unlink() for n in ("peftlab.json", "adapter_config.json")],
        "no peftlab.json",
    ),
    "missing weights": (lambda f: (f / WEIGHTS).unlink(), f"missing {WEIGHTS}"),
    "truncated": (lambda f: truncate(f / WEIGHTS), "damaged"),
    "corrupted": (lambda f: flip_last_byte(f / WEIGHTS), "damaged"),
    "newer format": (newer_format, "newer peftlab"),
    "pickle": (lambda f: (f / "extra.bin").write_bytes(b"x"), "--allow-pickle"),
    "bad json": (lambda f: (f / "peftlab.json").write_text("{"), "not valid JSON"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_adapter_is_one_clear_error(llama_adapter, tmp_path, capsys, damage):
    fn, message = DAMAGES[damage]
    folder = damaged_copy(llama_adapter, tmp_path, fn)
    err = error_of(capsys, "predict", "--adapter", folder, "good")
    assert message in err


def test_an_adapter_on_a_different_base_model_is_refused(llama_adapter, tmp_path, capsys):
    other = tiny.make_llama(tmp_path / "other-llama", seed=1)
    err = error_of(capsys, "predict", "--adapter", str(llama_adapter), "--base", str(other), "x")
    assert "was trained on" in err and "--base" in err


def test_predict_without_inputs_or_with_a_missing_folder(llama_adapter, tmp_path, capsys):
    assert "nothing to predict" in error_of(capsys, "predict", "--adapter", str(llama_adapter))
    err = error_of(capsys, "predict", "--adapter", str(tmp_path / "nope"), "x")
    assert "does not exist" in err


def test_predict_generates_for_a_summarization_adapter(tiny_llama, tmp_path, capsys):
    data = tiny.write_csv(tmp_path / "sum.csv", tiny.summary_rows(160))
    adapter = train(
        tiny_llama,
        data,
        tmp_path / "run",
        "--task",
        "summarization",
        "--max-new-tokens",
        "6",
        "--lr",
        "1e-2",
    )
    results = predict(capsys, "--adapter", str(adapter), "good great fun film")
    assert results[0]["generation"].endswith("review")
