"""--report-to logs a run to real trackers through accelerate's: what was logged is read
back from a real MLflow store (SQLite), real TensorBoard event files and trackio's own
local SQLite database."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import tiny

from peftlab.cli import main

TRAIN = ["--epochs", "2", "--batch-size", "16", "--validations", "2", *tiny.ALL_ROWS]


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts in ./mlruns
    return uri


def tensorboard_scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_a_run_logs_config_steps_scores_costs_and_its_record(
    tiny_llama, sentiment_csv, tmp_path, mlflow_store
):
    from mlflow import MlflowClient

    out = tmp_path / "run"
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), *TRAIN]
    assert main([*argv, "--report-to", "tensorboard,mlflow", "--project", "tiny"]) == 0
    record = json.loads((out / "run.json").read_text())
    steps = record["train"]["steps"]
    assert record["tracking"]["trackers"] == ["tensorboard", "mlflow"]

    client = MlflowClient(mlflow_store)
    run = client.get_run(record["tracking"]["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("lora-")
    assert run.data.params["method.name"] == "lora" and run.data.params["train.epochs"] == "2.0"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(1, steps + 1))
    assert [m.value for m in losses] == [h["loss"] for h in record["train"]["history"]]
    assert len(client.get_metric_history(run.info.run_id, "validation/accuracy")) == 2
    metrics = run.data.metrics
    assert metrics["test/accuracy"] == record["after"]["accuracy"]
    assert metrics["test_base/accuracy"] == record["before"]["accuracy"]
    assert metrics["cost/peak_memory_mb"] == record["train"]["peak_memory_mb"]
    assert metrics["cost/trainable_params"] == record["train"]["trainable_params"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"run.json", "report.md"} <= logged
    saved = json.loads(Path(client.download_artifacts(run.info.run_id, "run.json")).read_text())
    assert saved["status"] == "done" and saved["after"] == record["after"]

    scalars = tensorboard_scalars(out / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, steps + 1))
    assert [lr for _, lr in scalars["train/lr"]] == pytest.approx(
        [h["lr"] for h in record["train"]["history"]]
    )
    assert scalars["test/accuracy"] == [(steps, pytest.approx(record["after"]["accuracy"]))]


@pytest.mark.long
def test_a_run_logs_to_trackio_locally(tiny_llama, sentiment_csv, tmp_path):
    """trackio's local-first store (TRACKIO_DIR, read once at its import: a process of
    its own), read back from its SQLite file: project, run, config and every step."""
    out, store = tmp_path / "run", tmp_path / "trackio"
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), *TRAIN]
    argv += ["--report-to", "trackio", "--project", "tiny"]
    env = {**os.environ, "TRACKIO_DIR": str(store), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "peftlab", *argv], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((out / "run.json").read_text())
    with sqlite3.connect(store / "tiny.db") as db:
        rows = db.execute("SELECT run_name, step, metrics FROM metrics ORDER BY id").fetchall()
        (config,) = db.execute("SELECT config FROM configs").fetchone()
    (name,) = {name for name, _, _ in rows}  # one run, named as the run is
    assert name.startswith("lora-") and name.endswith("-sentiment")
    logged = [(step, json.loads(metrics)) for _, step, metrics in rows]
    losses = [m["train/loss"] for _, m in logged if "train/loss" in m]
    assert losses == [h["loss"] for h in record["train"]["history"]]
    assert sum("validation/accuracy" in m for _, m in logged) == 2
    final = {k: v for _, m in logged for k, v in m.items()}
    assert final["test/accuracy"] == pytest.approx(record["after"]["accuracy"])
    assert final["test_base/accuracy"] == pytest.approx(record["before"]["accuracy"])
    assert json.loads(config)["method.name"] == "lora"


@pytest.mark.long
def test_a_comparison_logs_each_run_under_one_experiment(
    tiny_llama, sentiment_csv, tmp_path, mlflow_store
):
    from mlflow import MlflowClient

    out = tmp_path / "my-comparison"
    argv = ["compare", "--methods", "lora,ia3", "--seeds", "0", "--jobs", "2", *TRAIN]
    argv += ["--report-to", "tensorboard,mlflow"]
    assert main([*argv, *tiny.where(tiny_llama, sentiment_csv, out)]) == 0
    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("my-comparison")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["ia3-seed0", "lora-seed0"]
    assert all(r.info.status == "FINISHED" and "test/accuracy" in r.data.metrics for r in runs)
    for run in runs:  # and each run's TensorBoard events, in its own run directory
        record = json.loads((out / run.info.run_name / "run.json").read_text())
        scalars = tensorboard_scalars(out / run.info.run_name / "tensorboard")
        assert len(scalars["train/loss"]) == record["train"]["steps"]
        assert scalars["test/accuracy"][0][1] == pytest.approx(record["after"]["accuracy"])


@pytest.mark.parametrize(
    "value, fix",
    [("neptune", "use one or more of: tensorboard, mlflow"), ("aim", "pip install aim")],
)
def test_unknown_or_missing_trackers_are_one_line(
    tiny_llama, sentiment_csv, tmp_path, capsys, value, fix
):
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, tmp_path / "r"), "--report-to", value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "track.report_to" in err and value in err and fix in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_a_failed_run_is_marked_failed_and_its_resume_goes_on_in_the_same_run(
    tiny_llama, sentiment_csv, tmp_path, mlflow_store, monkeypatch
):
    from mlflow import MlflowClient

    from peftlab.runner import pipeline as runs

    real_train = runs.train

    def crash(*args, **kwargs):
        raise RuntimeError("the machine went away")

    out = tmp_path / "run"
    monkeypatch.setattr(runs, "train", crash)
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), *TRAIN, "--report-to", "mlflow"]
    assert main(argv) != 0
    run_id = json.loads((out / "run.json").read_text())["tracking"]["mlflow_run_id"]
    client = MlflowClient(mlflow_store)
    assert client.get_run(run_id).info.status == "FAILED"

    monkeypatch.setattr(runs, "train", real_train)
    assert main(["run", "--resume", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["tracking"]["mlflow_run_id"] == run_id
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED" and "test/accuracy" in resumed.data.metrics
    assert len(client.search_runs([resumed.info.experiment_id])) == 1
