"""`peftlab run` under torchrun: two CPU processes (gloo), one run directory, one log,
identical weights on both ranks; and the helpers in a plain single process."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import tiny
import torch

from peftlab.cli import main
from peftlab.training import distributed
from peftlab.training.loop import rank_weight_hashes
from peftlab.training.trainable import trainable_sha256


def test_helpers_in_one_process_need_no_process_group():
    distributed.init()
    assert distributed.is_main() and distributed.rank() == 0
    assert distributed.num_processes() == 1 and distributed.backend() is None
    value = {"run_dir": "runs/x"}
    assert distributed.broadcast_object(value) is value
    assert distributed.gather_object("h") == ["h"]
    distributed.barrier()
    with distributed.main_first():
        pass
    lines = []
    distributed.main_only(lines.append)("once")
    assert lines == ["once"]
    assert not torch.distributed.is_initialized()


def test_weight_hash_covers_trainable_weights_and_differing_ranks_are_an_error(monkeypatch):
    from accelerate.utils import DistributedType

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    before = trainable_sha256(model)
    with torch.no_grad():
        model[0].weight.add_(1)  # frozen: not part of the hash
    assert trainable_sha256(model) == before
    with torch.no_grad():
        model[1].bias.add_(1)
    assert trainable_sha256(model) != before

    accelerator = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    assert rank_weight_hashes(model, accelerator) == [trainable_sha256(model)]
    monkeypatch.setattr(distributed, "gather_object", lambda h: [h, "0" * 64])
    with pytest.raises(RuntimeError, match="different weights"):
        rank_weight_hashes(model, accelerator)


def test_resume_with_another_process_count_is_refused(tmp_path):
    from peftlab.errors import PeftlabError
    from peftlab.runner.pipeline import check_process_count
    from peftlab.runner.record import RunRecord

    record = RunRecord(tmp_path, {"environment": {"num_processes": 2}})
    check_process_count(record, tmp_path)  # no checkpoint: nothing to continue
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(PeftlabError, match="resume it with 2"):
        check_process_count(record, tmp_path)
    check_process_count(RunRecord(tmp_path, {"environment": {"num_processes": 1}}), tmp_path)


@pytest.mark.processes
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_torchrun_two_processes_one_run_directory(tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = tiny.write_csv(tmp_path / "sentiment.csv", tiny.sentiment_rows(64))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "peftlab",
        "run",
        "--model",
        str(tiny_llama),
        "--dataset",
        str(data),  # no --out: the timestamped default directory must be shared
        "--method",
        "lora",
        "--batch-size",
        "4",
        "--max-steps",
        "4",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
        "--lr",
        "5e-3",
        *tiny.ALL_ROWS,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done"
    assert record["train"]["num_processes"] == 2
    assert record["environment"]["num_processes"] == 2
    assert record["environment"]["distributed_backend"] == "gloo"
    hashes = record["train"]["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert not (run_dir / "checkpoint").exists()

    # The adapter rank 0 saved holds exactly the weights every rank trained.
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    adapter = PeftModel.from_pretrained(base, run_dir / "adapter", is_trainable=True)
    assert trainable_sha256(adapter) == hashes[0]

    # Evaluation is split between the processes and gathered: one process's numbers.
    alone = tmp_path / "alone"
    argv = ["run", "--model", str(tiny_llama), "--dataset", str(data), "--out", str(alone)]
    assert main([*argv, "--max-steps", "1", *tiny.ALL_ROWS]) == 0
    single = json.loads((alone / "run.json").read_text())["before"]
    assert record["before"]["samples"] == single["samples"] > 0
    assert record["before"]["accuracy"] == single["accuracy"]
    assert record["before"]["loss"] == pytest.approx(single["loss"], abs=1e-3)

    # One log, not one per process (counted in the whole output: two processes' lines
    # can interleave within one line).
    for text in (
        "data: local file",
        "evaluating the base model",
        "base: accuracy",
        "step 2: validation",
        "tuned: accuracy",
        "| accuracy |",
    ):
        assert done.stdout.count(text) == 1, (text, done.stdout)


@pytest.mark.processes
def test_accelerate_launch_says_why_it_started_one_process(tiny_llama, tmp_path):
    """On a CPU, `accelerate launch --num_processes 2` without --multi_gpu starts the run
    once: the run says so at once, with the command that starts two."""
    data = tiny.write_csv(tmp_path / "sentiment.csv", tiny.sentiment_rows(32))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    run = ["-m", "peftlab", "run", "--model", str(tiny_llama), "--dataset", str(data),
           "--max-steps", "1", "--out", str(tmp_path / "run"), *tiny.ALL_ROWS]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([*launch, *run], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "asked for 2 processes but started one" in done.stdout
    assert "accelerate launch --multi_gpu --num_processes 2" in done.stdout


def test_a_plain_run_has_no_process_request_to_meet(monkeypatch):
    from peftlab.training import distributed

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert distributed.unmet_process_request() is None
