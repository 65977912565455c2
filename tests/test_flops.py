"""The cost of a run against what the machine can do: torch's own FLOP count of a real
training batch, the achieved rate, and MFU against this machine's matmul peak, measured
once per CPU, dtype and thread count and kept under PEFTLAB_HOME."""

import json

import pytest
import tiny
import torch
from builds import Built

from peftlab.cli import main
from peftlab.training import flops


def test_the_count_is_torchs_own_and_leaves_training_as_it_was(tiny_llama, sentiment_csv):
    from torch.utils.flop_counter import FlopCounterMode

    built = Built(tiny_llama, sentiment_csv, "lora")
    built.model.train()
    state = torch.get_rng_state()
    counted = flops.count_flops(built.model, built.task, built.batch, "fp32", torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)  # no dropout mask drawn
    assert built.model.training and all(p.grad is None for p in built.model.parameters())
    with FlopCounterMode(display=False) as direct:
        built.task.loss(built.model, built.batch).backward()
    assert counted == direct.get_total_flops() > 0
    built.model.zero_grad()
    with FlopCounterMode(display=False) as forward_only, torch.no_grad():
        built.task.loss(built.model, built.batch)
    assert counted > 2 * forward_only.get_total_flops()  # the backward pass is in it


def test_a_run_records_its_flops_and_mfu_against_a_kept_peak(
    tiny_llama, sentiment_csv, tmp_path, peftlab_home, monkeypatch
):
    out = tmp_path / "run"
    argv = ["run", *tiny.where(tiny_llama, sentiment_csv, out), "--epochs", "1"]
    assert main([*argv, "--precision", "fp32", *tiny.ALL_ROWS]) == 0
    record = json.loads((out / "run.json").read_text())
    t, env = record["train"], record["environment"]
    assert t["train_flops"] == pytest.approx(t["flops_per_sample"] * t["samples"], rel=1e-6)
    assert t["achieved_flops_per_s"] == pytest.approx(
        t["train_flops"] / t["train_compute_s"], rel=0.01
    )
    assert t["mfu"] == pytest.approx(t["achieved_flops_per_s"] / t["peak_flops_per_s"], abs=1e-4)
    assert env["precision"] == "fp32" and env["cpu"] and isinstance(env["cpu_flags"], list)
    assert "MFU" in (out / "report.md").read_text()
    kept = json.loads((peftlab_home / "peak_flops.json").read_text())
    (key,) = kept
    assert json.loads(key)["device"] == env["cpu"] and round(kept[key]) == t["peak_flops_per_s"]


def test_the_kept_peak_is_the_highest_measured_per_machine(peftlab_home, monkeypatch):
    rates = iter([1e9, 0.5e9, 2e9, 3e9, 4e9])  # a busy moment measures 0.5e9
    monkeypatch.setattr(flops, "measure_peak", lambda *a, **k: next(rates))
    monkeypatch.setattr(flops, "REMEASURE_AFTER_S", 0.0)  # every call measures
    cpu = torch.device("cpu")
    assert flops.peak_flops("fp32", 2, cpu) == 1e9
    assert flops.peak_flops("fp32", 2, cpu) == 1e9  # busier now: the kept peak stays
    assert flops.peak_flops("fp32", 2, cpu) == 2e9  # idler: it rises
    assert flops.peak_flops("fp32", 1, cpu) == 3e9  # another thread count: its own peak
    monkeypatch.setattr(flops, "machine", lambda: {"device": "another CPU", "flags": []})
    assert flops.peak_flops("fp32", 2, cpu) == 4e9  # another machine: its own
    kept = json.loads((peftlab_home / "peak_flops.json").read_text())
    assert sorted(kept.values()) == [2e9, 3e9, 4e9]


def test_a_process_measures_each_peak_at_most_once_a_minute(peftlab_home, monkeypatch):
    measured = []
    monkeypatch.setattr(flops, "measure_peak", lambda *a, **k: measured.append(a) or 1e9)
    monkeypatch.setattr(flops, "_measured_at", {})
    cpu = torch.device("cpu")
    assert flops.peak_flops("fp32", 2, cpu) == flops.peak_flops("fp32", 2, cpu) == 1e9
    assert len(measured) == 1  # the second run of the minute reads the kept peak
    assert flops.peak_flops("fp32", 1, cpu) == 1e9 and len(measured) == 2  # its own key
    monkeypatch.setattr(flops, "REMEASURE_AFTER_S", 0.0)  # a minute later
    assert flops.peak_flops("fp32", 2, cpu) == 1e9 and len(measured) == 3


def test_a_real_peak_is_a_plausible_rate():
    rate = flops.measure_peak("fp32", 1, torch.device("cpu"), repeats=2)
    assert 1e8 < rate < 1e14  # FLOP/s: any CPU core is between 0.1 GFLOP/s and 100 TFLOP/s


def test_emulated_bf16_is_measured_on_a_smaller_matmul(monkeypatch):
    """bf16 on a CPU without it runs ~1 GFLOP/s: a 1024 matmul took seconds per run."""
    from peftlab.training import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    assert flops.peak_size("bf16", cpu) == flops.EMULATED_PEAK_SIZE < flops.PEAK_SIZE
    assert flops.peak_size("fp32", cpu) == flops.PEAK_SIZE
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    assert flops.peak_size("bf16", cpu) == flops.PEAK_SIZE


def test_the_leaderboard_shows_compute_and_a_dash_for_older_records():
    from peftlab.comparison.compare_report import cell
    from peftlab.comparison.leaderboard import compute_columns

    runs = [{"train_flops": 2e9, "mfu": 0.01}, {"train_flops": 4e9, "mfu": 0.03}]
    assert compute_columns(runs) == {"train_gflops": 3.0, "mfu_percent": 2.0}
    older = compute_columns([{"samples_per_s": 1.0}])
    assert older == {"train_gflops": None, "mfu_percent": None}
    assert cell({"rows": []}, older, "mfu_percent", "{:.2f}") == "-"
