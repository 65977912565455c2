"""Frozen lower layers computed once: the model gives the same outputs from the stored
layer outputs as from running the layers, and training is unchanged where nothing in the
lower layers is random."""

import json

import pytest
import tiny
import torch

from peftlab.cli import main
from peftlab.config import RunConfig
from peftlab.data import assets, sources
from peftlab.methods.registry import get_method
from peftlab.models import loading
from peftlab.runner.checks import checked, resolved
from peftlab.tasks.setup import build_task, model_info, padding_side
from peftlab.training import frozen_cache


def attached(model_dir, data_file, task_name: str, layers: list[str] | None):
    """The model with LoRA on `layers`, its task and encoded training items, as run() has."""
    cfg = RunConfig()
    cfg.model.name, cfg.data.name, cfg.task.name = str(model_dir), str(data_file), task_name
    cfg.method.layers = layers
    cfg.train.precision = "fp32"
    cfg = resolved(checked(cfg))
    source = assets.resolve_model(cfg.model.name)
    info = model_info(source, cfg)
    dataset = sources.load(cfg.data, cfg.task.name)
    tokenizer = loading.load_tokenizer(source, padding_side=padding_side(info))
    task = build_task(cfg, info, dataset, tokenizer)
    model = loading.load_model(source, info, dataset.label_names, tokenizer, False, None)
    torch.manual_seed(0)
    model = get_method("lora").attach(model, cfg.method, info)
    return model, task, task.encode(dataset.splits["train"])[:24]


@pytest.fixture(scope="module")
def summary_csv(tmp_path_factory):
    return tiny.write_csv(tmp_path_factory.mktemp("sum") / "s.csv", tiny.summary_rows(80))


@pytest.mark.parametrize(
    "model_name, task_name",
    [
        ("tiny_llama", "classification"),  # left padding, label scored at the last token
        ("tiny_bert", "classification"),  # right padding, a linear head on [CLS]
        ("tiny_llama", "summarization"),  # left padding, loss over target tokens
    ],
)
def test_stored_lower_outputs_give_the_models_own_loss(
    request, sentiment_csv, summary_csv, model_name, task_name
):
    data_file = sentiment_csv if task_name == "classification" else summary_csv
    model, task, items = attached(request.getfixturevalue(model_name), data_file, task_name, ["1"])
    model.eval()  # the stored outputs are eval-mode ones: compare like with like
    cache = frozen_cache.build(model, task, items, 5, "fp32", torch.device("cpu"))
    assert isinstance(cache, frozen_cache.FrozenCache) and cache.stack.first_trained == 1
    assert [h.shape[0] for h in cache.hidden] == [len(it.input_ids) for it in items]
    rows = [3, 0, 17, 9]  # mixed lengths: padding differs from when they were stored
    batch = task.collate([items[i] for i in rows])
    with torch.no_grad():
        expected = task.loss(model, batch)
        with cache.feeding(rows, batch["attention_mask"]):
            from_cache = task.loss(model, batch)
    assert from_cache.item() == pytest.approx(expected.item(), rel=1e-5)
    layer_zero = cache.stack.container[0]
    assert not isinstance(layer_zero, frozen_cache._PassThrough)  # put back on exit


def test_nothing_is_stored_when_layer_zero_trains(tiny_llama, sentiment_csv):
    model, task, items = attached(tiny_llama, sentiment_csv, "classification", None)
    assert frozen_cache.build(model, task, items, 8, "fp32", torch.device("cpu")) is None


def run_record(tiny_llama, sentiment_csv, out, *extra) -> dict:
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), "--precision", "fp32"]
    argv += ["--train-samples", "64", "--test-samples", "16", "--epochs", "3", *extra]
    assert main(argv) == 0
    return json.loads((out / "run.json").read_text())


def test_training_with_stored_outputs_matches_running_the_layers(
    tiny_llama, sentiment_csv, tmp_path
):
    cached = run_record(tiny_llama, sentiment_csv, tmp_path / "a", "--layers", "1")
    plain = run_record(
        tiny_llama, sentiment_csv, tmp_path / "b", "--layers", "1", "--no-cache-frozen-layers"
    )
    assert cached["train"]["frozen_layers_cached"] == 1
    assert plain["train"]["frozen_layers_cached"] == 0
    losses = [h["loss"] for h in cached["train"]["history"]]
    assert losses == pytest.approx([h["loss"] for h in plain["train"]["history"]], rel=1e-4)
    assert cached["after"]["loss"] == pytest.approx(plain["after"]["loss"], rel=1e-4)


def test_a_single_epoch_stores_nothing(tiny_llama, sentiment_csv, tmp_path):
    record = run_record(tiny_llama, sentiment_csv, tmp_path / "a", "--layers", "1", "--epochs", "1")
    assert record["train"]["frozen_layers_cached"] == 0
