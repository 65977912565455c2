"""The workers of a comparison: take the next waiting trial from its studies, run it as a
child process, record the outcome. The storage is the only thing workers share.

A comparison is one study of final runs (method x seed, scored on the test split) and,
with `--tune`, one tuning study per method (validation only, pruned by ASHA). Tuning
trials go first; a method's tuned final runs wait until its search is over, then take
its best settings.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from peftlab.comparison import study as studies
from peftlab.comparison import tuning
from peftlab.comparison.child import run_child
from peftlab.runner.pipeline import say
from peftlab.runner.record import RECORD_FILE, RunRecord
from peftlab.tasks import spec_of

POLL_S = 2.0  # how often an idle worker looks for work while others still run
FINISHED = ("done", "pruned")


@dataclass
class Comparison:
    url: str  # the storage's URL: a tuning trial's child reports to it
    storage: object
    study: object  # the final runs
    out: Path  # this worker's run directories
    searches: dict = field(default_factory=dict)  # method -> its tuning study

    @classmethod
    def open(cls, url: str, storage, study, out: Path) -> Comparison:
        comparison = cls(url, storage, study, out)
        comparison.refresh()
        return comparison

    def refresh(self) -> None:
        """Load the tuning studies named since this worker last looked (one named a moment
        ago may not exist yet: it is loaded on a later look)."""
        for method, name in self.study.user_attrs.get("searches", {}).items():
            if method not in self.searches:
                with contextlib.suppress(KeyError):
                    self.searches[method] = studies.load_study(self.storage, name)

    def all_studies(self) -> list:
        return [*self.searches.values(), self.study]

    def claim(self) -> tuple | None:
        """(study, trial id) of the next trial to run: tuning first, then the final runs
        whose method's search is over."""
        self.refresh()
        for search in self.searches.values():
            trial_id = studies.claim(search, self.storage)
            if trial_id is not None:
                return search, trial_id

        def ready(spec: dict) -> bool:
            if not spec.get("tuned_from"):
                return True
            search = self.searches.get(spec["tuned_from"])
            return search is not None and studies.search_over(search)

        trial_id = studies.claim(self.study, self.storage, ready)
        return (self.study, trial_id) if trial_id is not None else None

    def anything_left(self) -> bool:
        """Whether any trial still waits or runs. A tuned run waits, unclaimable, until
        its search is over; a worker that stopped at "nothing running" could stop just
        as another finished the search, leaving the tuned run to nobody."""
        return any(studies.pending(s) for s in self.all_studies())


def finished(run_dir: Path) -> bool:
    path = run_dir / RECORD_FILE
    return path.is_file() and RunRecord.open(run_dir).get("status") in FINISHED


def work(comparison: Comparison, jobs: int, log=say) -> int:
    """Take and run waiting trials with `jobs` runs at once until none is left; the
    machine's cores are split between them, and each gets a GPU of its own if there are."""
    import torch

    threads = max(1, (os.cpu_count() or 1) // jobs)
    gpus = torch.cuda.device_count()
    slots = [(threads, i % gpus if gpus else None) for i in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        done = pool.map(lambda slot: work_loop(comparison, *slot, log), slots)
        return sum(done)


def work_loop(comparison: Comparison, threads: int, gpu: int | None, log) -> int:
    ran = 0
    while True:
        for study in comparison.all_studies():
            studies.fail_stale(study)  # a dead worker's trial goes back to waiting
        job = comparison.claim()
        if job is None:
            if not comparison.anything_left():
                return ran
            time.sleep(POLL_S)
            continue
        run_trial(comparison, *job, threads, gpu, log)
        ran += 1


def run_trial(comparison: Comparison, study, trial_id: int, threads, gpu, log) -> None:
    storage = comparison.storage
    trial = storage.get_trial(trial_id)
    spec = trial.user_attrs
    run_dir = comparison.out / spec["name"]
    log(f"== {spec['name']}")
    with studies.heartbeat(storage, trial_id):
        config, where, error = settings_of(comparison, study, trial_id, trial)
        if error:
            outcome = {"error": error}
        elif finished(run_dir):  # its worker died after the run, before reporting it
            outcome = {"record": dict(RunRecord.open(run_dir))}
        else:
            outcome = run_child(config, run_dir, comparison.out / "shared", threads, gpu, where)
    if "error" in outcome:
        log(f"!! {spec['name']} failed: {outcome['error']}")
    else:
        record = outcome["record"]
        record["run_dir"] = str(run_dir)
        outcome["pruned"] = record.get("status") == "pruned"
        outcome["value"] = score_of(record)
    if not studies.finish(storage, trial_id, outcome):
        log(f"!! {spec['name']}: judged dead by another worker and retried; this result dropped")


def settings_of(comparison: Comparison, study, trial_id: int, trial) -> tuple:
    """(config, --trial JSON or None, error or None) of a trial: a tuning trial's own
    sample, a tuned run's best settings of its method's search, else as planned."""
    spec = trial.user_attrs
    config = spec["config"]
    if "params" in spec:  # a tuning trial
        params = studies.record_params(study, trial_id, spec["params"], spec["space"])
        where = {"storage": comparison.url, "study": study.study_name, "trial": trial.number}
        return tuning.apply(config, params), where, None
    if spec.get("tuned_from"):
        best = studies.best_params(comparison.searches[spec["tuned_from"]])
        if best is None:
            return config, None, f"no tuning trial of {spec['method']} finished; see tune/"
        return tuning.apply(config, best), None, None
    return config, None, None


def score_of(record: dict) -> float:
    """A trial's value: the best validation score of a tuning trial (the last one reported
    if it was pruned), else the test metric."""
    if record.get("status") == "pruned":
        return record["pruned"]["score"]
    if record["config"]["train"]["score_on"] == "validation":
        return record["validation"][record["validation"]["metric"]]
    return record["after"][spec_of(record).metric]
