"""One contract for every registered method, on tiny in-process models.

- the trainable parameters are the method's own (plus a new linear head);
- training never changes a base weight in place (except `full`);
- with the method disabled the model computes exactly what the base model computes;
- save -> reload reproduces the outputs (through plain peft for peft methods);
- merged == unmerged for mergeable methods; the others refuse with a reason.
A method cannot be registered without passing it: the suite is parametrized over METHODS
and over tiny models of every architecture family in builds.CASES (GPT-2, Llama, Gemma,
DistilBERT, BERT, RoBERTa, T5, BART), each on the tasks it supports.
"""

import pytest
import torch
from builds import CASES, Built, case_id

from peftlab.adapters.artifact import save_artifact
from peftlab.adapters.inference import reload_artifact
from peftlab.errors import PeftlabError
from peftlab.methods.head_copies import is_trained_copy_param
from peftlab.methods.registry import METHODS
from peftlab.methods.switching import base_model, merge_method

# Pairs the method must refuse up front: these architectures have no bias terms, and
# DistilBERT takes no key/value cache for prefixes.
BIAS_ONLY = ("bitfit", "beft")
REFUSED = {(name, arch): "no bias terms" for arch in ("llama", "gemma", "t5") for name in BIAS_ONLY}
_CONV1D = ("loha", "lokr", "oft", "boft", "hra", "c3a", "miss", "shira", "beft")
for _name in (*_CONV1D, "delora", "psoft", "supertuning"):
    REFUSED[_name, "gpt2"] = "Conv1D.* is not supported|Conv1D'> not supported"  # peft's words
REFUSED["glora", "gpt2"] = "Conv1D.* is not a plain torch.nn.Linear"
REFUSED["peanut", "gpt2"] = "does not support target modules of type .*Conv1D"
REFUSED["osf", "gpt2"] = "attached to none of the selected modules .*Conv1D"  # peft skips them
REFUSED["prefix", "distilbert"] = "past_key_values"
for _arch in ("t5", "bart"):  # their ForSequenceClassification takes no virtual tokens
    for _name in ("prefix", "prompt", "ptuning"):
        REFUSED[_name, _arch, "linear"] = "does not take"


@pytest.fixture(params=CASES, ids=[case_id(*c) for c in CASES])
def case(request, tiny_model, sentiment_csv, summary_csv):
    arch, task, head = request.param
    data_file = sentiment_csv if task == "classification" else summary_csv
    return arch, tiny_model(arch), data_file, task, head


def build(case, name, **method_args):
    """Built(...), or None after checking the refusal where the pair is in REFUSED."""
    arch, model_dir, data_file, task, head = case
    reason = REFUSED.get((name, arch, head)) or REFUSED.get((name, arch))
    if reason is None:
        return Built(model_dir, data_file, name, task, head, **method_args)
    with pytest.raises(PeftlabError, match=reason):
        Built(model_dir, data_file, name, task, head, **method_args)
    return None


def is_new_head(name: str) -> bool:
    """A new linear head's parameters: peft's modules_to_save or peftlab's trained copy."""
    return "modules_to_save" in name or is_trained_copy_param(name)


@pytest.mark.parametrize("name", list(METHODS))
def test_contract(name, case, tmp_path):
    """Every clause on one build, trained once: a model build and a training pass are most
    of each clause's cost. A failure names its clause (the helper in the traceback)."""
    built = build(case, name)
    if built is None:
        return
    trainable_parameters_are_the_methods_own(built)
    before = built.logits(built.model)
    frozen = frozen_weights(built.model)
    built.train_steps()
    expected = built.logits(built.model)
    assert not torch.allclose(before, expected), "training changed nothing"
    if name != "full":
        training_leaves_base_weights(built, frozen)
        disabled_model_equals_base(built)
    save_reload_reproduces_outputs(built, expected, tmp_path)
    merge_is_exact_or_refused_with_a_reason(built, expected)  # last: merging folds it in


def trainable_parameters_are_the_methods_own(built):
    trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
    total = sum(1 for _ in built.model.parameters())
    assert trainable, "a method must train something"
    if built.method.name == "full":
        assert len(trainable) == total
    else:
        assert all(built.method.owns(n) or is_new_head(n) for n in trainable), trainable
        assert any(built.method.owns(n) for n in trainable)
        assert len(trainable) < total


def frozen_weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def training_leaves_base_weights(built, frozen):
    for n, p in built.model.named_parameters():
        # bitsandbytes repacks 4-bit storage for its CPU kernels: the values are compared
        # through the outputs (disabled == base), not byte by byte.
        if n in frozen and p.dtype != torch.uint8:
            assert torch.equal(p, frozen[n]), f"{n} changed in place"


def disabled_model_equals_base(built):
    with base_model(built.model):
        disabled = built.logits(built.model)
    torch.testing.assert_close(disabled, built.logits(built.base), rtol=1e-5, atol=1e-5)


def save_reload_reproduces_outputs(built, expected, tmp_path):
    save_artifact(built.model, built.tokenizer, tmp_path / "adapter", {}, built.method.kind)
    # Another seed draws another new head: the saved one must replace it.
    reloaded = reload_artifact(
        built.method, tmp_path / "adapter", built.fresh_base(seed=1), built.cfg.method, built.info
    )
    torch.testing.assert_close(built.logits(reloaded), expected, rtol=1e-5, atol=1e-5)
    if built.method.kind == "peft":  # plain peft, no peftlab code in the way
        from peft import PeftModel

        plain = PeftModel.from_pretrained(built.fresh_base(seed=1), tmp_path / "adapter")
        torch.testing.assert_close(built.logits(plain), expected, rtol=1e-5, atol=1e-5)


def merge_is_exact_or_refused_with_a_reason(built, expected):
    if built.method.merge:
        with pytest.raises(PeftlabError, match="cannot merge"):
            merge_method(built.model, built.method)
        return
    with base_model(built.model):
        base = built.logits(built.model)
    assert (base - expected).abs().max() > 1e-3  # trained: a merge that drops it would show
    # In float64, so that rounding cannot hide or fake a difference: in float32 a large
    # trained update (FourierFT's scaling of 150) left 1e-3 on an AVX2 CPU and not on an
    # AVX512 one. Some tuners (C3A, DeFT) build their update in float32 inside: 1e-7 here.
    built.model.double()
    expected = built.logits(built.model)
    merged = merge_method(built.model, built.method)
    assert not any(built.method.owns(n) for n, _ in merged.named_parameters())  # folded in
    assert not any(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(built.logits(merged), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lora", "ia3", "adapter", "bitfit"])
def test_layer_selection(name, tiny_llama, tiny_bert, sentiment_csv):
    model_dir = tiny_bert if name == "bitfit" else tiny_llama
    built = Built(model_dir, sentiment_csv, name, layers=["1"])
    trainable = [
        n for n, p in built.model.named_parameters() if p.requires_grad and built.method.owns(n)
    ]
    assert trainable and all(".1." in n for n in trainable), trainable


def test_selection_matching_nothing_lists_what_exists(tiny_llama, sentiment_csv):
    with pytest.raises(PeftlabError, match=r"matches no module; this model has .*q_proj"):
        Built(tiny_llama, sentiment_csv, "lora", target_modules=["nothing_here"])
    with pytest.raises(PeftlabError, match="layers 0-1"):
        Built(tiny_llama, sentiment_csv, "lora", layers=["5-7"])


def test_bitfit_on_a_model_without_biases_is_refused(tiny_llama, sentiment_csv):
    with pytest.raises(PeftlabError, match="no bias terms"):
        Built(tiny_llama, sentiment_csv, "bitfit")


def test_registry_matches_cli_and_readme(capsys):
    from pathlib import Path

    from peftlab.cli import main

    main(["methods"])
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("\n\n")[0].splitlines()]
    assert listed == list(METHODS)
    assert "peft tuners that are not methods here" in out and "xlora: mixes" in out
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in METHODS:
        assert f"`{name}`" in readme, name


def test_side_selection_on_an_encoder_decoder():
    from transformers import T5Config, T5ForConditionalGeneration

    from peftlab.models.selection import select_modules

    model = T5ForConditionalGeneration(
        T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2)
    )
    encoder = select_modules(model, ["q", "v"], None, "encoder")
    decoder = select_modules(model, ["q", "v"], {1}, "decoder")
    assert encoder and all(n.startswith("encoder.") for n in encoder)
    assert decoder and all(n.startswith("decoder.block.1.") for n in decoder)
    assert len(select_modules(model, ["q", "v"], None, "both")) == 2 * len(encoder) + 4


def test_qlora_on_an_8bit_base(tiny_llama, sentiment_csv, tmp_path):
    built = Built(tiny_llama, sentiment_csv, "qlora", quant_bits=8)
    assert any("Linear8bit" in type(m).__name__ for m in built.model.modules())
    built.train_steps()
    expected = built.logits(built.model)
    with base_model(built.model):
        torch.testing.assert_close(built.logits(built.model), built.logits(built.base))
    save_artifact(built.model, built.tokenizer, tmp_path / "adapter", {}, built.method.kind)
    reloaded = reload_artifact(
        built.method, tmp_path / "adapter", built.fresh_base(), built.cfg.method, built.info
    )
    torch.testing.assert_close(built.logits(reloaded), expected, rtol=1e-5, atol=1e-5)
