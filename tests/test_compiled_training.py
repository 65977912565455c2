"""--compile-training (training/compiled_blocks.py): each layer block compiled for the
steps, the same training as eager, the blocks uncompiled again after, validation eager;
and no key/value cache while training (models/loading.no_kv_cache)."""

import json

import pytest
import tiny
import torch
from transformers import AutoModelForCausalLM, T5Config, T5ForConditionalGeneration

from peftlab.cli import main
from peftlab.models.loading import no_kv_cache
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
