"""One contract for every registered method, on tiny in-process models.

- the trainable parameters are the method's own (plus a new linear head);
- training never changes a base weight in place (except `full`);
- with the method disabled the model computes exactly what the base model computes;
- save -> reload reproduces the outputs (through plain peft for peft methods);
- merged == unmerged for mergeable methods; the others refuse with a reason.
A method cannot be registered without passing it: the suite is parametrized over METHODS.
"""

import pytest
import torch

from peftlab import assets, data, models
from peftlab.artifact import save_artifact
from peftlab.config import RunConfig
from peftlab.errors import PeftlabError
from peftlab.methods import METHODS, base_model, merge_method, reload_artifact
from peftlab.run import seed_everything
from peftlab.tasks.setup import build_task, model_info, padding_side

MODELS = ["tiny_llama", "tiny_bert"]


class Built:
    """A tiny model with a method attached, its task, and a batch to compare outputs on."""

    def __init__(self, model_dir, csv, method_name, **method_args):
        cfg = RunConfig()
        cfg.model.name = str(model_dir)
        cfg.data.name = str(csv)
        cfg.data.template = "review: {text} sentiment:"
        cfg.method.name = method_name
        cfg.method.num_virtual_tokens = 4
        cfg.method.prompt_init_text = "review sentiment"
        for key, value in method_args.items():
            setattr(cfg.method, key, value)
        self.cfg = cfg.validate()
        self.method = METHODS[method_name]
        self.source = assets.resolve_model(cfg.model.name)
        self.info = model_info(self.source, cfg)
        self.dataset = data.load(cfg.data)
        self.tokenizer = models.load_tokenizer(self.source, padding_side(self.info))
        self.task = build_task(cfg, self.info, self.dataset, self.tokenizer)
        self.base = self.fresh_base()
        seed_everything(0)
        self.model = self.method.attach(self.fresh_base(), cfg.method, self.info)
        rows = self.dataset.splits["test"][:8]
        self.batch = self.task.collate(self.task.encode(rows))

    def fresh_base(self):
        seed_everything(0)  # the same random linear head every time
        extra = self.method.load_kwargs(self.cfg.method) if self.method.load_kwargs else None
        return models.load_model(
            self.source, self.info, self.dataset.label_names, self.tokenizer, False, extra
        )

    def logits(self, model):
        model.eval()
        with torch.no_grad():
            return self.task.logits(model, self.batch)

    def train_steps(self, steps=3):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=5e-2)
        self.model.train()
        for _ in range(steps):
            loss = self.task.loss(self.model, self.batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        self.model.eval()


# Pairs where the method must refuse the model up front (SmolLM2-like llama has no biases).
REFUSED = {("bitfit", "tiny_llama"): "no bias terms"}


@pytest.fixture(params=MODELS)
def model_dir(request):
    return request.param, request.getfixturevalue(request.param)


def build(model_dir, csv, name, **method_args):
    """Built(...), or None after checking the refusal where the pair is in REFUSED."""
    fixture_name, path = model_dir
    reason = REFUSED.get((name, fixture_name))
    if reason is None:
        return Built(path, csv, name, **method_args)
    with pytest.raises(PeftlabError, match=reason):
        Built(path, csv, name, **method_args)
    return None


def is_new_head(name: str) -> bool:
    return name.startswith(("classifier.", "score.")) or ".classifier." in name


@pytest.mark.parametrize("name", list(METHODS))
def test_trainable_parameters_are_the_methods_own(name, model_dir, sentiment_csv):
    built = build(model_dir, sentiment_csv, name)
    if built is None:
        return
    trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
    total = sum(1 for _ in built.model.parameters())
    assert trainable, "a method must train something"
    if name == "full":
        assert len(trainable) == total
    else:
        assert all(built.method.owns(n) or is_new_head(n) for n in trainable), trainable
        assert any(built.method.owns(n) for n in trainable)
        assert len(trainable) < total


@pytest.mark.parametrize("name", [n for n in METHODS if n != "full"])
def test_training_leaves_base_weights_and_disabled_model_equals_base(
    name, model_dir, sentiment_csv
):
    built = build(model_dir, sentiment_csv, name)
    if built is None:
        return
    frozen = {
        n: p.detach().clone() for n, p in built.model.named_parameters() if not p.requires_grad
    }
    before = built.logits(built.model)
    built.train_steps()
    after = built.logits(built.model)
    assert not torch.allclose(before, after), "training changed nothing"
    for n, p in built.model.named_parameters():
        # bitsandbytes repacks 4-bit storage for its CPU kernels: the values are compared
        # through the outputs below (disabled == base), not byte by byte.
        if n in frozen and p.dtype != torch.uint8:
            assert torch.equal(p, frozen[n]), f"{n} changed in place"
    with base_model(built.model):
        disabled = built.logits(built.model)
    torch.testing.assert_close(disabled, built.logits(built.base), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(METHODS))
def test_save_reload_reproduces_outputs(name, model_dir, sentiment_csv, tmp_path):
    built = build(model_dir, sentiment_csv, name)
    if built is None:
        return
    built.train_steps()
    expected = built.logits(built.model)
    save_artifact(built.model, built.tokenizer, tmp_path / "adapter", {}, built.method.kind)
    reloaded = reload_artifact(
        built.method, tmp_path / "adapter", built.fresh_base(), built.cfg.method, built.info
    )
    torch.testing.assert_close(built.logits(reloaded), expected, rtol=1e-5, atol=1e-5)
    if built.method.kind == "peft":  # plain peft, no peftlab code in the way
        from peft import PeftModel

        plain = PeftModel.from_pretrained(built.fresh_base(), tmp_path / "adapter")
        torch.testing.assert_close(built.logits(plain), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(METHODS))
def test_merge_is_exact_or_refused_with_a_reason(name, model_dir, sentiment_csv):
    built = build(model_dir, sentiment_csv, name)
    if built is None:
        return
    built.train_steps()
    expected = built.logits(built.model)
    if built.method.merge:
        with pytest.raises(PeftlabError, match="cannot merge"):
            merge_method(built.model, built.method)
        return
    merged = merge_method(built.model, built.method)
    assert not any(p.requires_grad and built.method.owns(n) for n, p in merged.named_parameters())
    torch.testing.assert_close(built.logits(merged), expected, rtol=1e-4, atol=1e-4)


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
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert listed == list(METHODS)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in METHODS:
        assert f"`{name}`" in readme, name


def test_side_selection_on_an_encoder_decoder():
    from transformers import T5Config, T5ForConditionalGeneration

    from peftlab.selection import select_modules

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
