"""Config: defaults <- YAML <- flags, validated once with field, value and fix."""

import pytest

from peftlab.cli import build_config, build_parser, main
from peftlab.config import RunConfig, from_dict, iter_fields
from peftlab.errors import ConfigError


def parse(*argv):
    return build_config(build_parser().parse_args(["run", *argv]))


def test_defaults_validate_and_round_trip():
    cfg = RunConfig().validate()
    assert from_dict(cfg.to_dict()) == cfg


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "train:\n  lr: 0.001\n  epochs: 2\nmethod:\n  lora_r: 4\n"
        "data:\n  labels: [neg, pos]\nname: exp\n"
    )
    cfg = parse("--config", str(path), "--lr", "0.01")
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 2 and cfg.method.lora_r == 4
    assert cfg.data.labels == ["neg", "pos"] and cfg.name == "exp"


def test_flags_are_typed():
    cfg = parse(
        "--target-modules",
        "q_proj,v_proj",
        "--no-keep-best",
        "--batch-size",
        "4",
        "--template",
        "T: {text}",
    )
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.keep_best is False and cfg.train.batch_size == 4


def test_on_off_settings_read_booleans_and_the_bare_flag_turns_them_on(tmp_path):
    """YAML reads `on` as a boolean; compile_training was a boolean in older run.json."""
    assert parse().train.compile_training == "auto"
    assert parse("--compile-training").train.compile_training == "on"
    assert parse("--compile-training", "off").train.compile_training == "off"
    path = tmp_path / "exp.yaml"
    for text, value in (("on", "on"), ("true", "on"), ("off", "off"), ("auto", "auto")):
        path.write_text(f"train:\n  compile_training: {text}\ntask:\n  chat_template: {text}\n")
        cfg = parse("--config", str(path))
        assert (cfg.train.compile_training, cfg.task.chat_template) == (value, value)
    old = RunConfig().to_dict()
    old["train"]["compile_training"] = False
    assert from_dict(old).train.compile_training == "off"
    path.write_text("train:\n  compile_training: maybe\n")
    with pytest.raises(ConfigError) as info:
        parse("--config", str(path))
    assert info.value.field == "train.compile_training"
    assert "use one of ('auto', 'on', 'off')" in str(info.value)


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--lr", "-1"], "train.lr"),
        (["--batch-size", "0"], "train.batch_size"),
        (["--batch-size", "2.5"], "--batch-size"),
        (["--epochs", "abc"], "--epochs"),
        (["--lora-dropout", "1.5"], "method.lora_dropout"),
        (["--template", "no slot"], "data.template"),
        (["--method", "nope"], "method.name"),
        (["--epochs", "0"], "train.epochs"),
        (["--test-fraction", "0.6", "--validation-fraction", "0.5"], "data.validation_fraction"),
    ],
)
def test_bad_values_name_the_field(argv, field):
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert info.value.field.startswith(field)


def test_unknown_yaml_key_suggests_the_close_one(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epoch: 2\n")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        parse("--config", str(path))


def test_bad_yaml_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("peftlab: error: --config") and "Traceback" not in err
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for _owner, name, f in iter_fields(RunConfig()):
        flag = "--" + (f.metadata.get("flag") or name.replace("_", "-"))
        assert flag in text, flag
        assert " ".join(f.metadata["help"].split())[:30] in text, name


def test_every_setting_with_fixed_choices_lists_them_in_help():
    import re

    from peftlab.cli import build_parser
    from peftlab.config import RunConfig, iter_fields

    parser = build_parser()
    (run,) = [a for a in parser._subparsers._group_actions if "run" in a.choices]
    text = re.sub(r"\s+", " ", run.choices["run"].format_help())
    with_choices = [f for _, _, f in iter_fields(RunConfig()) if f.metadata.get("choices")]
    assert len(with_choices) >= 5
    for f in with_choices:
        assert f"one of: {', '.join(map(str, f.metadata['choices']))};" in text, f.name
