"""peft's other tuners through the generic path: none silently absent, their options
checked against peft's own config classes, and a whole run, prediction and comparison
with them as with any method (the contract suite covers every architecture)."""

import json

import pytest
import tiny
from builds import Built

from peftlab.cli import main
from peftlab.errors import ConfigError
from peftlab.methods import adalora
from peftlab.methods.peft_tuners import NOT_REGISTERED, TUNERS, parse_options, peft_config_class
from peftlab.methods.registry import METHODS

# Task types and the methods registered through their own modules.
NOT_TUNERS = {"SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS"}
NOT_TUNERS |= {"FEATURE_EXTRACTION", "LORA", "IA3", "PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"}


def test_every_peft_tuner_is_a_method_or_says_why_not():
    from peft.utils import PeftType

    registered = {t.peft_type for t in [*TUNERS, adalora.TUNER]}
    explained = {name.strip().upper() for key in NOT_REGISTERED for name in key.split(",")}
    missing = set(PeftType.__members__) - NOT_TUNERS - registered - explained
    assert not missing, f"peft tuners neither registered nor explained: {sorted(missing)}"
    assert all(t.name in METHODS for t in TUNERS)


def test_options_are_fields_of_the_peft_config_class():
    loha = peft_config_class(next(t for t in TUNERS if t.name == "loha"))
    assert parse_options(["r=4", "alpha=8.5", "use_effective_conv2d=true"], loha) == {
        "r": 4,
        "alpha": 8.5,
        "use_effective_conv2d": True,
    }
    with pytest.raises(ConfigError, match=r"'rank' is not a field of peft's LoHaConfig.*\br\b"):
        parse_options(["rank=4"], loha)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_options(["r"], loha)
    with pytest.raises(ConfigError, match="--target-modules"):
        parse_options(["target_modules=q_proj"], loha)


def test_options_reach_the_tuner(tiny_llama, sentiment_csv):
    def trainable(**method_args):
        built = Built(tiny_llama, sentiment_csv, "loha", **method_args)
        return sum(p.numel() for p in built.model.parameters() if p.requires_grad)

    assert trainable(peft_options=["r=2"]) * 4 == trainable(peft_options=["r=8"])


def test_a_bad_option_is_one_line_before_anything_loads(tmp_path, capsys):
    args = ["run", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "run")]
    assert main([*args, "--method", "vera", "--peft-options", "ranks=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method.peft_options" in err and "VeraConfig" in err
    assert main([*args, "--method", "lora", "--peft-options", "r=4"]) == 2
    assert "lora takes its own flags" in capsys.readouterr().err


def test_a_run_with_a_peft_tuner_learns_and_predicts(tiny_llama, sentiment_csv, tmp_path):
    out = tmp_path / "run"
    args = ["run", *tiny.where(tiny_llama, sentiment_csv, out), "--method", "loha"]
    args += ["--peft-options", "r=4,alpha=8", "--template", "review: {text} sentiment:"]
    args += ["--epochs", "3", "--lr", "5e-3", "--batch-size", "16", *tiny.ALL_ROWS]
    assert main(args) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["method"]["peft_options"] == ["r=4", "alpha=8"]
    assert record["after"]["accuracy"] >= 0.8 > record["before"]["accuracy"]
    predictions = tmp_path / "predictions.jsonl"
    texts = ["a brilliant superb charming film", "a dull awful tedious film"]
    assert (
        main(["predict", "--adapter", str(out / "adapter"), *texts, "--output", str(predictions)])
        == 0
    )
    labels = [json.loads(line)["label"] for line in predictions.read_text().splitlines()]
    assert labels == ["positive", "negative"]


def test_compare_tune_gives_a_peft_tuner_a_range_around_its_default_rate():
    from peftlab.comparison.tuning import space

    rate = METHODS["lokr"].default_lr
    lr = space("lokr", ["lr", "lora_r"])["lr"]  # lora_r is LoRA's own: not tuned here
    assert (lr.low, lr.high) == pytest.approx((rate / 10, rate * 10)) and lr.log
    assert list(space("lokr", ["lr", "lora_r"])) == ["lr"]
