"""bench/results.json keeps each kind of machine's results: a second CPU adds its rows."""

import json
import sys
from pathlib import Path

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
