"""A run killed with SIGKILL mid-training and resumed ends exactly where an
uninterrupted run ends: same adapter weights, same loss history, same test accuracy."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tiny
from safetensors.torch import load_file

from peftlab.cli import main


def settings(model, data, out):
    return [
        "run",
        *tiny.where(model, data, out),
        "--method",
        "lora",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--eval-every",
        "40",
        "--checkpoint-every",
        "5",
        *tiny.ALL_ROWS,
        "--seed",
        "3",
    ]


def checkpoint_step(out) -> int:
    try:
        return json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


@pytest.mark.long
def test_kill_minus_nine_then_resume_matches_uninterrupted(tiny_llama, sentiment_csv, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "peftlab", *settings(tiny_llama, sentiment_csv, killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while checkpoint_step(killed) < 40 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    record = json.loads((killed / "run.json").read_text())
    assert record["status"] == "running", "the run finished before it could be killed"
    assert "after" not in record and checkpoint_step(killed) >= 40

    assert main(["run", "--resume", str(killed)]) == 0
    straight = tmp_path / "straight"
    assert main(settings(tiny_llama, sentiment_csv, straight)) == 0

    resumed = json.loads((killed / "run.json").read_text())
    clean = json.loads((straight / "run.json").read_text())
    assert resumed["status"] == "done"
    assert resumed["after"]["accuracy"] == clean["after"]["accuracy"]
    assert resumed["after"]["loss"] == clean["after"]["loss"]
    assert [h["loss"] for h in resumed["train"]["history"]] == [
        h["loss"] for h in clean["train"]["history"]
    ]
    a = load_file(killed / "adapter" / "adapter_model.safetensors")
    b = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)


def test_resume_of_a_finished_run_does_nothing(tiny_llama, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "done"
    assert main([*settings(tiny_llama, sentiment_csv, out), "--max-steps", "3"]) == 0
    before = (out / "run.json").read_text()
    assert main(["run", "--resume", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "run.json").read_text() == before


def test_resume_refuses_other_settings_and_non_run_dirs(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path), "--lr", "1"]) == 2
    assert "drop the other settings" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
