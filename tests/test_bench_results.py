"""bench/results.json keeps each kind of machine's results: a second CPU adds its rows."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import vs_peer


def entry(speed: float) -> dict:
    one = {"samples_per_s": speed, "peak_memory_mb": 900, "metric": 0.6, "mfu": 0.1}
    peers = {p: {**one, "precision": "fp32"} for p in vs_peer.PIPELINES}
    return {
        **peers,
        "ratios": {f"vs_{p}": {"samples_per_s": 1.5} for p in vs_peer.PIPELINES[1:]},
    }


def test_an_older_file_moves_under_its_own_key_and_a_new_machine_adds_rows(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"machine": {"cpu_count": 2}, "cases": {"minilm-lora": entry(9)}}))
    report = vs_peer.load_report(path)
    assert list(report["machines"]) == [vs_peer.LEGACY_KEY]
    key, info = vs_peer.this_machine()
    assert info["device"] in key and all(flag in key for flag in info["flags"])
    report["machines"].setdefault(key, {"machine": info, "cases": {}})["cases"]["minilm-lora"] = (
        entry(5)
    )
    rows = [line for line in vs_peer.table(report).splitlines() if "minilm-lora" in line]
    assert len(rows) == 2 * len(vs_peer.PIPELINES)  # both machines, each pipeline
    assert {row.split(" | ")[0].strip("| ") for row in rows} == {vs_peer.LEGACY_KEY, key}


def test_the_emulated_bf16_peer_runs_only_where_the_cpu_has_bf16(monkeypatch):
    from peftlab.training import precision

    decoder = vs_peer.case_config("smollm2-lora")
    for native in (True, False):
        monkeypatch.setattr(precision, "native_bf16", lambda native=native: native)
        pipelines = vs_peer.pipelines_for(decoder)
        assert ("peer_bf16" in pipelines) is native
        assert {"peftlab", "peer", "peer_score"} <= set(pipelines)
    assert "peer_score" not in vs_peer.pipelines_for(vs_peer.case_config("minilm-lora"))


def test_seeds_give_one_round_each_and_bad_seeds_are_named(capsys):
    import argparse

    import pytest

    args = argparse.Namespace(seeds="0,1,2", quick=False, rounds=3)
    assert vs_peer.round_seeds(args) == [0, 1, 2]
    assert vs_peer.round_seeds(argparse.Namespace(seeds=None, quick=True, rounds=3)) == [0]
    assert vs_peer.case_config("smollm2-qlora", seed=2)["seed"] == 2
    with pytest.raises(SystemExit) as stop:
        vs_peer.round_seeds(argparse.Namespace(seeds="0,one", quick=False, rounds=3))
    assert "--seeds '0,one'" in str(stop.value)


def test_quick_mode_runs_every_case_on_less_data():
    assert set(vs_peer.QUICK) == set(vs_peer.CASES)
    for name in vs_peer.CASES:
        full, quick = vs_peer.case_config(name), vs_peer.case_config(name, quick=True)
        for key in ("train_samples", "validation_samples", "test_samples"):
            assert quick[key] < full[key]
        assert {k: v for k, v in quick.items() if not k.endswith("_samples")} == {
            k: v for k, v in full.items() if not k.endswith("_samples")
        }


def test_a_lever_measured_on_two_cases_keeps_both(tmp_path, capsys):
    import argparse

    import ab

    out = tmp_path / "levers.json"
    for case, speed in (("minilm-lora", 2.0), ("smollm2-lora", 3.0)):
        runs = {
            side: [{"samples_per_s": s, "peak_memory_mb": 900.0, "metric": 0.5}]
            for side, s in (("a", 1.0), ("b", speed))
        }
        args = argparse.Namespace(
            a="A", b="B", a_option=[], b_option=[], lever="L", case=case, quick=False, out=out
        )
        ab.record(args, runs)
    levers = next(iter(json.loads(out.read_text()).values()))["levers"]
    assert {case: entry["speedup"] for case, entry in levers["L"].items()} == {
        "minilm-lora": 2.0,
        "smollm2-lora": 3.0,
    }


def test_compiled_training_keeps_each_precision_of_a_machine(tmp_path):
    import compiled_training

    out = tmp_path / "compiled_training.json"
    for precision, speedup in (("bf16", 1.3), ("fp32", 1.2)):
        compiled_training.record({"precision": precision, "speedup": speedup}, out)
    (machine,) = json.loads(out.read_text()).values()
    assert machine["bf16"]["speedup"] == 1.3 and machine["fp32"]["speedup"] == 1.2
    assert "device" in machine["machine"]


def test_peftlab_options_get_rows_of_their_own_and_bad_ones_are_named(capsys):
    assert vs_peer.train_options(["compile_training=true", "batch_size=4"]) == {
        "compile_training": "on",
        "batch_size": 4,
    }
    assert vs_peer.row_name("smollm2-lora", False, []) == "smollm2-lora"
    named = vs_peer.row_name("smollm2-lora", True, ["compile_training=true"])
    assert named == "smollm2-lora (quick) [compile_training=true]"
    for bad in ("compile_training", "no_such_field=1", "compile_training=maybe"):
        with pytest.raises(SystemExit) as stop:
            vs_peer.train_options([bad])
        assert repr(bad) in str(stop.value) and "TrainArgs" in str(stop.value)
