"""--compile-training (training/compiled_blocks.py): each layer block compiled for the
steps, the same training as eager, the blocks uncompiled again after, validation eager;
auto's choice mid-run and its record (compile_choice.py, compile_plan.py); and no
key/value cache while training (models/loading.no_kv_cache)."""

import json
import re

import pytest
import tiny
import torch
from transformers import AutoModelForCausalLM, T5Config, T5ForConditionalGeneration

from peftlab.cli import main
from peftlab.models.loading import no_kv_cache
from peftlab.training import compile_choice
from peftlab.training.compile_choice import CompileRecord, StepTimes, should_compile
from peftlab.training.compiled_blocks import compiled_blocks, layer_blocks


def run_record(tiny_llama, sentiment_csv, out, *extra) -> dict:
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), "--precision", "fp32"]
    argv += ["--train-samples", "48", "--test-samples", "16", "--validations", "2", *extra]
    assert main(argv) == 0
    return json.loads((out / "run.json").read_text())


def test_compiled_blocks_train_as_the_eager_ones_do(tiny_llama, sentiment_csv, tmp_path):
    """Same losses, validations and test score (fp32, no dropout: the graphs may draw
    masks in another order); the upper block ran compiled, in one graph: none for
    validation."""
    torch._dynamo.reset()
    no_dropout = ("--lora-dropout", "0")
    compiled = run_record(
        tiny_llama, sentiment_csv, tmp_path / "c", *no_dropout, "--compile-training"
    )
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager = run_record(tiny_llama, sentiment_csv, tmp_path / "e", *no_dropout)
    assert compiled["train"]["compiled_blocks"] == 1 and eager["train"]["compiled_blocks"] == 0
    assert graphs == 1
    losses = [h["loss"] for h in compiled["train"]["history"]]
    assert losses == pytest.approx([h["loss"] for h in eager["train"]["history"]], rel=1e-4)
    assert len(compiled["train"]["evals"]) == 2
    assert compiled["after"]["loss"] == pytest.approx(eager["after"]["loss"], rel=1e-4)


def test_compiled_blocks_are_the_models_own_again_after(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    blocks = model.model.layers
    with compiled_blocks(model, log=lambda message: None) as compiled:
        assert compiled.blocks == list(blocks)[1:]  # the lowest stays eager
        assert all(block._compiled_call_impl is not None for block in compiled.blocks)
        with compiled.eager():
            assert all(block._compiled_call_impl is None for block in blocks)
        assert all(block._compiled_call_impl is not None for block in compiled.blocks)
    assert all(block._compiled_call_impl is None for block in blocks)


def test_layer_blocks_are_both_stacks_of_an_encoder_decoder_but_their_lowest():
    config = T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=3
    )
    model = T5ForConditionalGeneration(config)
    blocks = layer_blocks(model)
    # Not each T5Block's own list of sub-layers.
    assert blocks == [*model.encoder.block[1:], *model.decoder.block[1:]]


def test_training_builds_no_key_value_cache_and_the_setting_comes_back(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.tensor([[1, 2, 3]])
    assert model.config.use_cache and model(ids).past_key_values is not None
    with no_kv_cache(model):
        assert model(ids).past_key_values is None
    assert model.config.use_cache is True


def test_blocks_that_compile_only_in_pieces_train_on_eagerly(
    tiny_bert, sentiment_csv, tmp_path, capsys
):
    """BERT's blocks break their graph (transformers' output-capturing hooks): after the
    first step they are uncompiled, with a note, and the run ends as an eager one would."""
    torch._dynamo.reset()
    record = run_record(tiny_bert, sentiment_csv, tmp_path / "c", "--compile-training")
    assert "compile only in pieces (graph break: " in capsys.readouterr().out
    assert record["train"]["compiled_blocks"] == 0
    assert record["train"]["steps"] == len(record["train"]["history"]) == 6
    # Recorded: auto does not try these blocks again.
    (kept,) = json.loads(compile_choice.record_path().read_text()).values()
    assert kept["broke"]
    again = run_record(tiny_bert, sentiment_csv, tmp_path / "a")
    assert again["train"]["compile_training"].startswith(
        "auto: not compiled (these blocks broke their graph when compiled here before: "
    )


def test_without_a_cpp_compiler_the_run_says_so_and_trains_eagerly(
    tiny_llama, sentiment_csv, tmp_path, capsys, monkeypatch
):
    from torch._inductor import cpp_builder, exc

    def no_compiler():
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    record = run_record(tiny_llama, sentiment_csv, tmp_path / "c", "--compile-training")
    assert "inductor found no C++ compiler (InvalidCxxCompiler)" in capsys.readouterr().out
    assert record["train"]["compiled_blocks"] == 0 and record["train"]["steps"] == 6


def test_a_model_with_no_block_to_compile_says_so_and_trains_eagerly(
    tiny_llama, sentiment_csv, tmp_path, capsys, monkeypatch
):
    from peftlab.training import compiled_blocks as module

    monkeypatch.setattr(module, "layer_blocks", lambda model: [])  # one layer: none above
    record = run_record(tiny_llama, sentiment_csv, tmp_path / "c", "--compile-training")
    assert "no layer blocks above the lowest to compile; training eagerly" in (
        capsys.readouterr().out
    )
    assert record["train"]["compiled_blocks"] == 0 and record["train"]["steps"] == 6


def test_auto_compiles_mid_run_where_the_record_says_it_pays(
    tiny_llama, sentiment_csv, tmp_path, monkeypatch
):
    """A record of a free compile saving half a step: auto times eight eager steps (fused
    layers), compiles for the rest, trains as an eager run does, and records what this
    compile cost and saved."""
    torch._dynamo.reset()
    cheap = CompileRecord(compile_s=0.0, saving=0.5, measured=True)
    monkeypatch.setattr(compile_choice, "read_record", lambda key: cheap)
    no_dropout = ("--lora-dropout", "0", "--epochs", "2")
    auto = run_record(tiny_llama, sentiment_csv, tmp_path / "a", *no_dropout)
    train = auto["train"]
    assert train["compiled_at_step"] == 8 and train["compiled_blocks"] == 1
    assert re.fullmatch(  # the eager seconds depend on the machine's speed
        r"auto: compiled at step 8 \(~\d+ s of eager training left, ~\d+ s saved against a "
        r"~0 s compile \(measured here before\)\)",
        train["compile_training"],
    )
    report = (tmp_path / "a" / "report.md").read_text()
    assert "| compiled for training | 1 layer block, from step 9 |" in report
    eager = run_record(
        tiny_llama, sentiment_csv, tmp_path / "e", *no_dropout, "--compile-training", "off"
    )
    assert eager["train"]["compile_training"] == "off"
    losses = [h["loss"] for h in train["history"]]
    assert len(losses) == 12
    assert losses == pytest.approx([h["loss"] for h in eager["train"]["history"]], rel=1e-4)
    (kept,) = json.loads(compile_choice.record_path().read_text()).values()
    assert kept["compile_s"] >= 0 and kept["saving"] < 1 and kept["broke"] is None


def test_auto_leaves_a_short_run_eager(tiny_llama, sentiment_csv, tmp_path):
    record = run_record(tiny_llama, sentiment_csv, tmp_path / "a", "--epochs", "2")
    train = record["train"]
    assert train["compiled_blocks"] == 0 and train["compiled_at_step"] is None
    assert re.fullmatch(  # the eager seconds depend on the machine's speed
        r"auto: not compiled at step 8 \(~\d+ s of eager training left, ~\d+ s saved "
        r"against a ~45 s compile \(first compile here, estimated\)\)",
        train["compile_training"],
    )
    assert not compile_choice.record_path().exists()
    shorter = run_record(tiny_llama, sentiment_csv, tmp_path / "s")  # 6 steps
    assert shorter["train"]["compile_training"] == (
        "auto: not compiled (the run ended before 8 steps were timed)"
    )


def test_should_compile_weighs_the_time_saved_against_the_compile():
    first = CompileRecord()  # 45 s, 25%
    assert should_compile(1.0, 100, first)[0] is False  # 25 s saved
    go, why = should_compile(1.0, 200, first)  # 50 s saved
    assert go and why == (
        "~200 s of eager training left, ~50 s saved against a ~45 s compile (first "
        "compile here, estimated)"
    )
    warm = CompileRecord(compile_s=12.0, saving=0.35, measured=True)
    assert should_compile(0.6, 60, warm) == (
        True,
        "~36 s of eager training left, ~13 s saved against a ~12 s compile (measured here before)",
    )


def test_step_times_measure_the_compile_and_the_saving():
    times = StepTimes()
    for seconds in (3.0, 1.5, 0.5, 1.0, 1.0, 1.0, 1.0):
        times.add(seconds, compiled=False)
    assert times.eager_step_s() is None  # seven steps: not yet
    times.add(1.0, compiled=False)
    assert times.eager_step_s() == pytest.approx(1.0)  # not the first
    for seconds in (20.5, 0.4, 0.6):
        times.add(seconds, compiled=True)
    measured = times.measured(CompileRecord())
    assert measured.compile_s == pytest.approx(20.0) and measured.saving == pytest.approx(0.5)
    assert StepTimes().measured(CompileRecord()) is None


def test_records_are_kept_per_blocks_and_an_unreadable_file_is_none(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    key = compile_choice.blocks_key(layer_blocks(model), "fp32", "cpu")
    assert key == compile_choice.blocks_key(layer_blocks(model), "fp32", "cpu")
    assert key != compile_choice.blocks_key(layer_blocks(model), "bf16", "cpu")
    assert compile_choice.read_record(key) == CompileRecord()
    compile_choice.write_record(key, CompileRecord(12.0, 0.3, measured=True))
    assert compile_choice.read_record(key) == CompileRecord(12.0, 0.3, measured=True)
    compile_choice.record_path().write_text("{not json")
    assert compile_choice.read_record(key) == CompileRecord()
    compile_choice.record_path().write_text("[]")  # JSON, but no mapping of records
    assert compile_choice.read_record(key) == CompileRecord()
    assert compile_choice.write_record(key, CompileRecord(9.0, 0.2, measured=True)) is None
    assert compile_choice.read_record(key) == CompileRecord(9.0, 0.2, measured=True)


def test_an_unwritable_record_is_a_note_not_a_failed_run(
    tiny_llama, sentiment_csv, tmp_path, capsys, monkeypatch
):
    (tmp_path / "not_a_folder").write_text("")
    monkeypatch.setattr(
        compile_choice, "record_path", lambda: tmp_path / "not_a_folder" / "records.json"
    )
    record = run_record(tiny_llama, sentiment_csv, tmp_path / "c", "--compile-training")
    assert record["train"]["compiled_blocks"] == 1 and record["train"]["steps"] == 6
    assert "note: --compile-training: the compile's figures were not kept in " in (
        capsys.readouterr().out
    )
