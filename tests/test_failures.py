"""Every way a run can go wrong ends in one line that says what to do, and loses nothing:
damaged checkpoints and records, unwritable or busy run directories, kills at the end of
a run, bad numbers and labels, damaged adapter folders, and unexpected errors."""

import errno
import json

import pytest
import tiny

from peftlab.cli import main
from peftlab.runner import pipeline as run_module

QUICK = [
    "--train-samples",
    "48",
    "--validation-samples",
    "16",
    "--test-samples",
    "16",
    "--checkpoint-every",
    "2",
    "--precision",
    "fp32",
]


def argv(model, data, out, *extra):
    return ["run", *tiny.where(model, data, out), *QUICK, *extra]


def one_line_error(capsys, args, code=2) -> str:
    capsys.readouterr()
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def interrupt(monkeypatch, name):
    """Stop the run with Ctrl-C where `name` (a step of run.py) is called."""

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, name, stop)


@pytest.fixture
def interrupted(tiny_llama, sentiment_csv, tmp_path, monkeypatch):
    """A run stopped after training, before its adapter was saved: a checkpoint is left."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt(patch, "save_artifact")
        assert main(argv(tiny_llama, sentiment_csv, out)) == 130
    assert (out / "checkpoint" / "state.json").is_file()
    return out


@pytest.mark.parametrize(
    "damage",
    ["truncated weights", "junk state", "extra key", "no optimizer"],
)
def test_damaged_checkpoint_is_named_with_the_way_out(interrupted, capsys, damage):
    checkpoint = interrupted / "checkpoint"
    if damage == "truncated weights":
        data = (checkpoint / "trainable.safetensors").read_bytes()
        (checkpoint / "trainable.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "junk state":
        (checkpoint / "state.json").write_text("{not json")
    elif damage == "extra key":
        state = json.loads((checkpoint / "state.json").read_text())
        (checkpoint / "state.json").write_text(json.dumps({**state, "surprise": 1}))
    else:
        (checkpoint / "optimizer.pt").unlink()
    err = one_line_error(capsys, ["run", "--resume", str(interrupted)])
    assert "checkpoint" in err and "damaged" in err and f"delete {checkpoint}" in err
    # The way out works: without the checkpoint, training restarts and the run finishes.
    import shutil

    shutil.rmtree(checkpoint)
    assert main(["run", "--resume", str(interrupted)]) == 0
    assert json.loads((interrupted / "run.json").read_text())["status"] == "done"


@pytest.mark.parametrize("content", ["[]", '{"status": "running"}'])
def test_damaged_run_record_is_one_line(tmp_path, capsys, content):
    (tmp_path / "run.json").write_text(content)
    err = one_line_error(capsys, ["run", "--resume", str(tmp_path)])
    assert "run.json is damaged" in err


def test_out_that_is_a_file_or_unwritable_is_refused_before_loading(
    tiny_llama, sentiment_csv, tmp_path, capsys, monkeypatch
):
    def no_model_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(run_module.loading, "load_model", no_model_load)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert "is a file" in one_line_error(capsys, argv(tiny_llama, sentiment_csv, a_file))
    under_file = a_file / "run"
    err = one_line_error(capsys, argv(tiny_llama, sentiment_csv, under_file))
    assert "a file stands where a folder is needed" in err
    read_only = "/sys/peftlab-test/run"  # sysfs: even root cannot create folders there
    err = one_line_error(capsys, argv(tiny_llama, sentiment_csv, read_only))
    assert "choose a folder you can write to" in err


def test_full_disk_is_one_line_and_resumable(
    tiny_llama, sentiment_csv, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "adapter"))

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "save_artifact", disk_full)
        err = one_line_error(capsys, argv(tiny_llama, sentiment_csv, out))
    assert "No space left on device" in err and "--resume" in err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and "space" in record["error"]["message"]
    assert main(["run", "--resume", str(out)]) == 0  # the checkpoint carries it to the end
    assert json.loads((out / "run.json").read_text())["status"] == "done"


def test_a_run_directory_in_use_is_refused(tiny_llama, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    with run_module.lock_run_dir(out):  # as another peftlab process would hold it
        err = one_line_error(capsys, argv(tiny_llama, sentiment_csv, out))
    assert "in use by another peftlab run" in err and "pid" in err


def test_killed_after_training_resume_finishes_and_clears_leftovers(interrupted):
    orphan = interrupted / ".adapter.k1ll3d"  # what a killed atomic folder write leaves
    orphan.mkdir()
    (orphan / "adapter_model.safetensors").write_bytes(b"partial")
    assert main(["run", "--resume", str(interrupted)]) == 0
    record = json.loads((interrupted / "run.json").read_text())
    assert record["status"] == "done"
    assert (interrupted / "report.md").is_file() and (interrupted / "adapter").is_dir()
    assert not orphan.exists() and not (interrupted / "checkpoint").exists()


def test_report_comes_before_done(tiny_llama, sentiment_csv, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt(patch, "write_report")
        assert main(argv(tiny_llama, sentiment_csv, out)) == 130
    assert json.loads((out / "run.json").read_text())["status"] != "done"
    assert main(["run", "--resume", str(out)]) == 0
    assert (out / "report.md").is_file()


def test_rerunning_a_finished_run_is_refused(tiny_llama, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv(tiny_llama, sentiment_csv, out)) == 0
    before = (out / "run.json").read_text()
    err = one_line_error(capsys, argv(tiny_llama, sentiment_csv, out))
    assert "already holds this run, finished" in err
    assert (out / "run.json").read_text() == before


def test_unexpected_error_is_one_line_with_the_traceback_kept(
    tiny_llama, sentiment_csv, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"

    def broken(*args, **kwargs):
        raise RuntimeError("something deep inside a library")

    monkeypatch.setattr(run_module, "train", broken)
    err = one_line_error(capsys, argv(tiny_llama, sentiment_csv, out), code=1)
    assert "unexpected RuntimeError: something deep inside a library" in err
    assert f"traceback: {out / 'error.log'}" in err
    assert "Traceback" in (out / "error.log").read_text()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    with pytest.raises(RuntimeError):
        main(["--debug", "run", "--resume", str(out)])


@pytest.mark.parametrize("value", [".inf", "nan", "-inf"])
def test_non_finite_numbers_are_refused(tmp_path, capsys, value):
    config = tmp_path / "exp.yaml"
    config.write_text(f"train: {{lr: {value}}}\n")
    err = one_line_error(capsys, ["run", "--config", str(config)])
    assert "train.lr" in err and "finite" in err


def write_labels(path, labels):
    rows = tiny.sentiment_rows(60)
    for i, label in labels.items():
        rows[i]["label"] = label
    return tiny.write_csv(path, rows)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({4: "NaN"}, "missing label"),
        ({4: "3"}, "mixes numbers and words"),
    ],
)
def test_suspicious_labels_are_refused_by_row(tiny_llama, tmp_path, capsys, labels, expected):
    data = write_labels(tmp_path / "data.csv", labels)
    err = one_line_error(capsys, argv(tiny_llama, data, tmp_path / "run"))
    assert expected in err and "row 5" in err


def split_folder(folder, train_labels=None, test_labels=None):
    """A dataset folder with its own train/validation/test files, labels changed by row."""
    folder.mkdir()
    for name, rows, labels in (
        ("train", tiny.sentiment_rows(40), train_labels),
        ("validation", tiny.sentiment_rows(10, seed=2), None),
        ("test", tiny.sentiment_rows(10, seed=1), test_labels),
    ):
        for i, label in (labels or {}).items():
            rows[i]["label"] = label
        tiny.write_csv(folder / f"{name}.csv", rows)
    return folder


def test_a_rare_label_is_warned_about_by_row(tmp_path, capsys):
    from peftlab.config import DataArgs
    from peftlab.data import sources as data_module

    folder = split_folder(tmp_path / "data", train_labels={7: "x"})
    capsys.readouterr()
    loaded = data_module.load(DataArgs(name=str(folder)))
    assert loaded.label_names == ["negative", "positive", "x"]
    assert "label 'x' appears only 1 time(s) (train row 8)" in capsys.readouterr().out


def test_a_label_only_in_the_test_split_is_refused(tiny_llama, tmp_path, capsys):
    folder = split_folder(tmp_path / "data", test_labels=dict.fromkeys([2, 3, 4], "neutral"))
    err = one_line_error(capsys, argv(tiny_llama, folder, tmp_path / "run"))
    assert "['neutral'] have no training example" in err and "test rows 3, 4, 5" in err


@pytest.fixture
def adapter(tiny_llama, sentiment_csv, tmp_path):
    out = tmp_path / "run"
    assert main(argv(tiny_llama, sentiment_csv, out)) == 0
    return out / "adapter"


def test_damaged_adapter_folders_are_one_line(adapter, capsys):
    manifest_path = adapter / "peftlab.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "files": []}))
    err = one_line_error(capsys, ["predict", "--adapter", str(adapter), "good"])
    assert "'files' must map each weight file" in err
    manifest_path.write_text(json.dumps(manifest))
    (adapter / "adapter_config.json").write_text("{broken")
    err = one_line_error(capsys, ["predict", "--adapter", str(adapter), "good"])
    assert "adapter_config.json is damaged" in err
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "NOT_A_METHOD"}))
    err = one_line_error(capsys, ["predict", "--adapter", str(adapter), "good"])
    assert "adapter" in err
