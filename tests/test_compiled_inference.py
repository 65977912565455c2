"""Compiled inference (training/compiled.py): the same labels as eager, compiled once per
model structure, the live weights used (not the ones it was compiled with), a model that
does not export evaluated eagerly, and never compiled for a handful of inputs."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from peftlab.models.loading import cpu_attention
from peftlab.training import compiled
from peftlab.training.evaluate import evaluate
from tests.builds import Built


@pytest.fixture
def few_inputs_compile(monkeypatch):
    """The tiny test split has 48 rows: compile from 8 here (the threshold is a speed
    choice, tested on its own below)."""
    monkeypatch.setattr(compiled, "MIN_INPUTS", 8)


def lora_bert(tiny_bert, sentiment_csv, seed: int):
    built = Built(tiny_bert, sentiment_csv, "lora")
    torch.manual_seed(seed)
    for name, param in built.model.named_parameters():
        if "lora_B" in name:  # zero at init: give the adapter something to do
            torch.nn.init.normal_(param, std=0.5)
    return built


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="AOTInductor needs a C++ compiler"
)
def test_compiled_evaluation_matches_eager_and_reuses_the_code_with_new_weights(
    tiny_bert, sentiment_csv, peftlab_home, few_inputs_compile, capsys, monkeypatch
):
    # Loaded through the C++ loader: torch's package reader took 1.1 s more per process.
    def slow_loader(*args, **kwargs):
        raise AssertionError("the library was loaded through aoti_load_package")

    monkeypatch.setattr(torch._inductor, "aoti_load_package", slow_loader)
    first = lora_bert(tiny_bert, sentiment_csv, seed=1)
    items = first.task.encode(first.dataset.splits["test"])
    eager = evaluate(first.model, first.task, items, 16, "fp32")
    done = evaluate(first.model, first.task, items, 16, "fp32", compile=True)
    assert done.get("compiled") is True and "compiled" not in eager
    assert done["per_example"] == eager["per_example"]
    assert done["loss"] == pytest.approx(eager["loss"], rel=1e-4)
    assert "compiling" in capsys.readouterr().out
    assert len(list((peftlab_home / "compiled").glob("*/logits.pt2"))) == 1

    # Same structure, other weights: loaded, not compiled again, and computing with the
    # second model's weights (a library that kept the first's would give the first's).
    second = lora_bert(tiny_bert, sentiment_csv, seed=2)
    batch = second.task.collate(items[:16])
    # evaluate's own context: eager attention for short inputs is part of the structure
    with torch.inference_mode(), cpu_attention(second.model, 64):
        run = compiled.compiled_logits(second.model.eval(), second.task, 48, "fp32", "cpu")
        assert "compiling" not in capsys.readouterr().out
        got, want = run(batch), second.task.logits(second.model, batch)
        first_logits = first.task.logits(first.model.eval(), batch)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, first_logits, atol=1e-4)


def test_another_state_of_the_same_tensors_is_another_cache_entry(tiny_bert, sentiment_csv):
    """A merged or disabled adapter keeps its tensors but computes something else: a graph
    traced in one state must never serve the other."""
    built = lora_bert(tiny_bert, sentiment_csv, seed=1)
    key = compiled.cache_folder(compiled._TaskLogits(built.model, built.task), built.task, "fp32")
    other = copy.deepcopy(built.model)
    other.merge_adapter()
    merged = compiled.cache_folder(compiled._TaskLogits(other, built.task), built.task, "fp32")
    with built.model.disable_adapter():
        off = compiled.cache_folder(
            compiled._TaskLogits(built.model, built.task), built.task, "fp32"
        )
    again = compiled.cache_folder(compiled._TaskLogits(built.model, built.task), built.task, "fp32")
    assert len({key, merged, off}) == 3
    assert again == key


def test_a_model_that_does_not_export_is_evaluated_eagerly_and_not_tried_again(
    tiny_bert, sentiment_csv, peftlab_home, few_inputs_compile, monkeypatch, capsys
):
    built = lora_bert(tiny_bert, sentiment_csv, seed=1)
    items = built.task.encode(built.dataset.splits["test"])
    tries = []

    def refuse(folder, wrapper, task):
        tries.append(folder)
        raise torch._dynamo.exc.Unsupported("data-dependent branch")

    monkeypatch.setattr(compiled, "compile_into", refuse)
    eager = evaluate(built.model, built.task, items, 16, "fp32")
    for _ in range(2):
        out = evaluate(built.model, built.task, items, 16, "fp32", compile=True)
        assert "compiled" not in out and out["per_example"] == eager["per_example"]
    assert len(tries) == 1
    assert "does not compile (Unsupported: data-dependent branch)" in capsys.readouterr().out
    assert list((peftlab_home / "compiled").glob("*/failed.json"))


def test_a_killed_compiles_leftovers_are_removed_before_compiling_again(
    tiny_bert, sentiment_csv, peftlab_home, few_inputs_compile, monkeypatch
):
    built = lora_bert(tiny_bert, sentiment_csv, seed=1)
    items = built.task.encode(built.dataset.splits["test"])
    started = []

    def refuse(tmp, wrapper, task):
        started.append(tmp)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compiled, "compile_into", refuse)
    evaluate(built.model, built.task, items, 16, "fp32", compile=True)
    (failed,) = (peftlab_home / "compiled").glob("*/failed.json")
    folder = failed.parent
    failed.unlink()  # as if the first compile had been killed instead
    killed = folder.parent / f".{folder.name}.k1ll3d"  # write_dir_atomic's temporary
    (killed / "data").mkdir(parents=True)
    other = folder.parent / ".0123456789abcdef01234567.busy"  # another key's: not ours
    other.mkdir()
    evaluate(built.model, built.task, items, 16, "fp32", compile=True)
    assert len(started) == 2 and started[1].parent == folder.parent
    assert not killed.exists() and other.exists()


@pytest.mark.parametrize(
    ("inputs", "precision", "device", "reason"),
    [
        (10, "fp32", "cpu", "10 inputs"),
        (1000, "bf16", "cpu", "fp32 only"),
        (1000, "fp32", "cuda", "fp32 only"),
    ],
)
def test_compiling_is_skipped_where_it_does_not_pay(
    tiny_bert, sentiment_csv, inputs, precision, device, reason
):
    built = Built(tiny_bert, sentiment_csv, "lora")
    assert reason in compiled.reason_to_skip(built.task, inputs, precision, device)
    assert compiled.reason_to_skip(built.task, 1000, "fp32", "cpu") is None


def test_an_unwritable_cache_means_eager_with_a_note(
    tiny_bert, sentiment_csv, tmp_path, few_inputs_compile, monkeypatch, capsys
):
    blocker = tmp_path / "home"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("PEFTLAB_HOME", str(blocker))
    built = lora_bert(tiny_bert, sentiment_csv, seed=1)
    items = built.task.encode(built.dataset.splits["test"])
    out = evaluate(built.model, built.task, items, 16, "fp32", compile=True)
    assert "compiled" not in out
    assert "compiled inference unavailable" in capsys.readouterr().out


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="AOTInductor needs a C++ compiler"
)
def test_predict_compiles_on_request_with_the_same_labels_and_a_clean_stdout(
    tiny_bert, sentiment_csv, tmp_path, peftlab_home, few_inputs_compile, capsys
):
    import json

    import tiny

    from peftlab.cli import main

    out = tmp_path / "run"
    run = ["run", *tiny.where(tiny_bert, sentiment_csv, out), "--precision", "fp32"]
    assert main([*run, "--epochs", "1", *tiny.ALL_ROWS]) == 0
    texts = [f"{word} film number {i}" for i in range(6) for word in ("great", "dull")]

    def predict(*extra):
        capsys.readouterr()
        assert main(["predict", "--adapter", str(out / "adapter"), *texts, *extra]) == 0
        printed = capsys.readouterr()
        return [json.loads(line) for line in printed.out.splitlines()], printed.err

    eager, _ = predict()
    fast, notes = predict("--compile-inference")
    assert "compiling" in notes  # on stderr: stdout holds only the predictions
    assert [r["label"] for r in fast] == [r["label"] for r in eager]
    for a, b in zip(fast, eager, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert len(list((peftlab_home / "compiled").glob("*/logits.pt2"))) == 1
