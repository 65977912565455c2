"""`peftlab compare`: every method x seed as its own run, then one leaderboard.

The runs share one loaded dataset, one encoding and one base-model evaluation. Each run
is an ordinary run directory (run.json, adapter/), so a rerun skips finished runs and
resumes interrupted ones, and a method that fails (out of memory, say) is recorded with
its error while the others go on.
"""

from __future__ import annotations

import copy
import statistics
import traceback
from pathlib import Path

from peftlab.config import RunConfig
from peftlab.errors import PeftlabError
from peftlab.fsutil import write_json_atomic
from peftlab.record import RECORD_FILE, RunRecord
from peftlab.run import Shared, run, say
from peftlab.tasks import spec_of


def run_all(base: RunConfig, methods: list[str], seeds: list[int], out: Path, log=say) -> list:
    """Run (or skip, or resume) every method x seed under `out`; return their outcomes."""
    shared = Shared()
    outcomes = []
    for method in methods:
        for seed in seeds:
            cfg = copy.deepcopy(base)
            cfg.method.name, cfg.train.seed = method, seed
            cfg.name = f"{method}-seed{seed}"
            run_dir = out / cfg.name
            cfg.out = str(run_dir)
            cfg.validate()
            existing = run_dir / RECORD_FILE
            if existing.is_file() and RunRecord.open(run_dir).get("status") == "done":
                log(f"== {cfg.name}: done already, kept")
                outcomes.append({"run_dir": str(run_dir)})
                continue
            log(f"== {cfg.name}")
            try:
                run(cfg, run_dir, log=log, shared=shared)
                outcomes.append({"run_dir": str(run_dir)})
            except Exception as exc:  # one method failing must not sink the comparison
                error = (
                    str(exc) if isinstance(exc, PeftlabError) else f"{type(exc).__name__}: {exc}"
                )
                log(f"!! {cfg.name} failed: {error}")
                outcomes.append(
                    {
                        "run_dir": str(run_dir),
                        "method": method,
                        "seed": seed,
                        "error": error,
                        "trace": traceback.format_exc(limit=5),
                    }
                )
    return outcomes


def load_records(run_dirs: list[Path]) -> list[dict]:
    records = []
    for run_dir in run_dirs:
        record = RunRecord.open(run_dir)
        if record.get("status") != "done":
            raise PeftlabError(f"run '{run_dir}' has not finished; resume it first")
        records.append(dict(record, run_dir=str(run_dir)))
    return records


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def leaderboard(records: list[dict], failures: list[dict]) -> dict:
    """Group runs by method: metric mean and std over seeds, gain over base, costs."""
    spec = spec_of(records[0]) if records else spec_of({"config": {}})
    tasks = {spec_of(r).name for r in records}
    if len(tasks) > 1:
        raise PeftlabError(f"these runs are of different tasks ({sorted(tasks)}); compare one")
    metric = spec.metric
    others = [k for k in spec.scores if k != metric]
    if spec.name == "summarization":
        others.append("gen_len")
    rows = {}
    for record in records:
        rows.setdefault(record["config"]["method"]["name"], []).append(record)
    table = []
    for method, runs in rows.items():
        after = [r["after"][metric] for r in runs]
        before = [r["before"][metric] for r in runs]
        mean, std = mean_std(after)
        train = [r["train"] for r in runs]
        table.append(
            {
                "method": method,
                "seeds": [r["config"]["train"]["seed"] for r in runs],
                metric: round(mean, 4),
                f"{metric}_std": round(std, 4),
                **{k: round(statistics.fmean(r["after"][k] for r in runs), 4) for k in others},
                "base": round(statistics.fmean(before), 4),
                "gain": round(mean - statistics.fmean(before), 4),
                "trainable_params": train[0]["trainable_params"],
                "trainable_percent": train[0]["trainable_percent"],
                "adapter_mb": round(statistics.fmean(r["adapter"]["size_mb"] for r in runs), 3),
                "train_s": round(statistics.fmean(t["runtime_s"] for t in train), 1),
                "peak_memory_mb": round(max(t["peak_memory_mb"] for t in train), 0),
                "train_samples_per_s": round(
                    statistics.fmean(t["samples_per_s"] for t in train), 2
                ),
                "run_dirs": [r["run_dir"] for r in runs],
            }
        )
    table.sort(key=lambda row: -row[metric] if spec.greater_is_better else row[metric])
    test_counts = records[0]["data"].get("label_counts", {}).get("test") if records else None
    majority = round(max(test_counts) / sum(test_counts), 4) if test_counts else None
    return {
        "task": spec.name,
        "metric": metric,
        "greater_is_better": spec.greater_is_better,
        "scores": others,
        "majority_baseline": majority,
        "rows": table,
        "failures": failures,
    }


def compare(
    base: RunConfig | None,
    methods: list[str],
    seeds: list[int],
    out: Path,
    run_dirs: list[Path],
    log=say,
) -> dict:
    from peftlab.compare_report import write_compare_report

    failures = []
    if methods:
        outcomes = run_all(base, methods, seeds, out, log)
        failures = [o for o in outcomes if "error" in o]
        if len(failures) == len(outcomes):  # nothing ran: most likely a shared mistake
            raise PeftlabError(f"every run failed; the first: {failures[0]['error']}")
        run_dirs = run_dirs + [Path(o["run_dir"]) for o in outcomes if "error" not in o]
    if not run_dirs:
        raise PeftlabError("nothing to compare: give --methods, or run directories")
    records = load_records(run_dirs)
    board = leaderboard(records, [{k: v for k, v in f.items() if k != "trace"} for f in failures])
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compare.json", board)
    write_compare_report(board, records, out)
    return board
