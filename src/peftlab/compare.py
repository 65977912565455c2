"""`peftlab compare`: every method x seed as its own run, then one leaderboard.

Each run is a `peftlab run` in a process of its own (child.py), so its peak memory,
time and failure are its own; the data, its encoding and the base evaluation are
computed once and shared through the comparison folder (shared_cache.py). The runs are
trials of an Optuna study (study.py): `--jobs N` runs N at once here, and
`peftlab compare --worker --storage URL` on other machines takes the next waiting one.
A rerun keeps finished runs and retries failed ones.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from peftlab import study as studies
from peftlab.child import run_child
from peftlab.config import RunConfig
from peftlab.errors import PeftlabError
from peftlab.fsutil import write_json_atomic
from peftlab.record import RECORD_FILE, RunRecord
from peftlab.run import say
from peftlab.tasks import spec_of

POLL_S = 2.0  # how often an idle worker looks for work while others still run


@dataclass
class Execution:
    """Where a comparison's runs are recorded, and how many run at once here."""

    storage: str | None = None  # an Optuna storage URL; default: OUT/study.db
    jobs: int = 1
    study: str | None = None  # a worker joins this comparison (default: the only one)
    heartbeat_s: float = studies.HEARTBEAT_S


def plan(base: RunConfig, methods: list[str], seeds: list[int]) -> list[dict]:
    """One trial's settings per method x seed (validated here, before anything runs)."""
    runs = []
    for method in methods:
        for seed in seeds:
            cfg = copy.deepcopy(base)
            cfg.method.name, cfg.train.seed = method, seed
            cfg.name = f"{method}-seed{seed}"
            cfg.out = None  # each worker puts it in its own --out
            cfg.validate()
            runs.append({"name": cfg.name, "method": method, "seed": seed, "config": cfg.to_dict()})
    return runs


def finished(run_dir: Path) -> bool:
    return (run_dir / RECORD_FILE).is_file() and RunRecord.open(run_dir).get("status") == "done"


def run_all(base, methods, seeds, out: Path, execution: Execution, log=say) -> tuple:
    """Run (or keep) every method x seed under `out`; return (records, failures)."""
    storage = studies.open_storage(
        studies.storage_url(out, execution.storage), execution.heartbeat_s
    )
    name = execution.study or studies.study_name(out)
    study = studies.create_study(storage, name, execution.heartbeat_s)
    runs = plan(base, methods, seeds)
    for spec in runs:
        if finished(out / spec["name"]):
            log(f"== {spec['name']}: done already, kept")
    studies.enqueue(study, [r for r in runs if not finished(out / r["name"])])
    work(study, storage, out, execution.jobs, log)
    return collect(study, runs, out)


def work(study, storage, out: Path, jobs: int, log=say) -> int:
    """Take and run waiting trials with `jobs` runs at once until none is left; the
    machine's cores are split between them, and each gets a GPU of its own if there are."""
    import torch

    threads = max(1, (os.cpu_count() or 1) // jobs)
    gpus = torch.cuda.device_count()
    slots = [(threads, i % gpus if gpus else None) for i in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        done = pool.map(lambda slot: work_loop(study, storage, out, *slot, log), slots)
        return sum(done)


def work_loop(study, storage, out: Path, threads: int, gpu: int | None, log) -> int:
    ran = 0
    while True:
        studies.fail_stale(study)  # a dead worker's trial goes back to waiting
        trial_id = studies.claim(study, storage)
        if trial_id is None:
            if not studies.anything_running(study):
                return ran
            time.sleep(POLL_S)
            continue
        spec = storage.get_trial(trial_id).user_attrs
        run_dir = out / spec["name"]
        log(f"== {spec['name']}")
        with studies.heartbeat(storage, trial_id):
            if finished(run_dir):  # its worker died after the run, before reporting it
                outcome = {"record": dict(RunRecord.open(run_dir))}
            else:
                outcome = run_child(spec["config"], run_dir, out / "shared", threads, gpu)
        if "error" in outcome:
            log(f"!! {spec['name']} failed: {outcome['error']}")
        else:
            outcome["record"]["run_dir"] = str(run_dir)
            metric = spec_of(outcome["record"]).metric
            outcome["value"] = outcome["record"]["after"][metric]
        studies.finish(storage, trial_id, outcome)
        ran += 1


def collect(study, runs: list[dict], out: Path) -> tuple[list[dict], list[dict]]:
    """Each planned run's record (from its folder here, or as a worker elsewhere
    reported it to the storage), or why it has none."""
    records, failures = [], []
    trials = studies.trials_of(study)
    for spec in runs:
        run_dir = out / spec["name"]
        if finished(run_dir):
            records.append(dict(RunRecord.open(run_dir), run_dir=str(run_dir)))
            continue
        mine = [t for t in trials if t.user_attrs.get("name") == spec["name"]]
        latest = max(mine, key=lambda t: t.number) if mine else None
        outcome = (latest.user_attrs.get("outcome") or {}) if latest else {}
        if "record" in outcome:
            records.append(outcome["record"])
            continue
        error = outcome.get("error") or f"not run ({latest.state.name if latest else 'no trial'})"
        failures.append(
            {
                "run_dir": str(run_dir),
                "method": spec["method"],
                "seed": spec["seed"],
                "error": error,
            }
        )
    return records, failures


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
                "forgetting": forgetting_of(runs),
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
        "forgetting_measure": next(
            (r["forgetting"]["measure"] for r in records if "forgetting" in r), None
        ),
        "rows": table,
        "failures": failures,
    }


def forgetting_of(runs: list[dict]) -> str:
    """Mean forgetting over seeds, as shown ('-' where it was not measured)."""
    values = [r["forgetting"]["value"] for r in runs if "forgetting" in r]
    return f"{statistics.fmean(values):.4g}" if values else "-"


def compare(
    base: RunConfig | None,
    methods: list[str],
    seeds: list[int],
    out: Path,
    run_dirs: list[Path],
    execution: Execution | None = None,
    log=say,
) -> dict:
    from peftlab.compare_report import write_compare_report

    records, failures = load_records(run_dirs), []
    if methods:
        ran, failures = run_all(base, methods, seeds, out, execution or Execution(), log)
        if not ran:  # nothing ran: most likely a shared mistake
            raise PeftlabError(f"every run failed; the first: {failures[0]['error']}")
        records += ran
    if not records:
        raise PeftlabError("nothing to compare: give --methods, or run directories")
    board = leaderboard(records, failures)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compare.json", board)
    write_compare_report(board, records, out)
    return board


def join(out: Path, execution: Execution, log=say) -> int:
    """`peftlab compare --worker`: run another comparison's waiting trials here."""
    storage = studies.open_storage(
        studies.storage_url(out, execution.storage), execution.heartbeat_s
    )
    study = studies.find_study(storage, execution.study)
    log(f"worker for {study.study_name}: {execution.jobs} run(s) at once, run directories in {out}")
    return work(study, storage, out, execution.jobs, log)
