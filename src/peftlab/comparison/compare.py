"""`peftlab compare`: every method x seed as its own run, then one leaderboard.

Each run is a `peftlab run` in a process of its own (child.py), so its peak memory,
time and failure are its own; the data, its encoding and the base evaluation are
computed once and shared through the comparison folder (runner/shared_cache.py). The runs are
trials of Optuna studies (study.py, workers.py): `--jobs N` runs N at once here, and
`peftlab compare --worker --storage URL` on other machines takes the next waiting one.
With `--tune`, each method first gets the same number of validation-only tuning trials
(tuning.py); its best settings then run over the seeds, beside its default settings.
A rerun keeps finished runs and retries failed ones.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from peftlab.comparison import study as studies
from peftlab.comparison import tuning
from peftlab.comparison.leaderboard import leaderboard
from peftlab.comparison.workers import Comparison, finished, work
from peftlab.config import RunConfig
from peftlab.errors import PeftlabError
from peftlab.fsutil import write_json_atomic
from peftlab.runner.checks import checked
from peftlab.runner.pipeline import say
from peftlab.runner.record import RunRecord
from peftlab.runner.tracking import prepare_shared
from peftlab.tasks import TASK_SPECS

VALIDATIONS = 4  # with --tune, every run validates this often: the pruner's rungs
SEARCH_STATES = ("WAITING", "RUNNING", "COMPLETE", "PRUNED")  # a rerun keeps these trials


@dataclass
class Execution:
    """Where a comparison's runs are recorded, and how many run at once here."""

    storage: str | None = None  # an Optuna storage URL; default: OUT/study.db
    jobs: int = 1
    study: str | None = None  # a worker joins this comparison (default: the only one)
    heartbeat_s: float = studies.HEARTBEAT_S


@dataclass
class Tuning:
    """`--tune FIELDS --trials K`: K validation-only trials per method."""

    fields: list[str]
    trials: int = 6


# The checks of a comparison's request, one for the command line and the Python API;
# `spell` writes a setting's name the way its user gave it ("--trials", "trials").


def tuning_of(fields: list[str] | None, trials: int | None, methods: list[str], spell=str):
    """The search asked for (None without fields), checked."""
    if not fields:
        if trials is not None:
            raise PeftlabError(
                f"{spell('trials')} says how many tuning trials {spell('tune')} runs; give "
                f"{spell('tune')} too (e.g. lr)"
            )
        return None
    if not methods:
        raise PeftlabError(
            f"{spell('tune')} tunes the methods of a comparison; give {spell('methods')}"
        )
    trials = Tuning.trials if trials is None else trials
    if trials < 2:
        raise PeftlabError(f"{spell('trials')} {trials}: a search needs 2 trials or more")
    return Tuning(tuning.parse_fields(fields, methods), trials)


def execution_of(storage, jobs: int, study=None, heartbeat_s=studies.HEARTBEAT_S, spell=str):
    if jobs < 1:
        raise PeftlabError(f"{spell('jobs')} {jobs}: use a number above 0")
    if not heartbeat_s > 0:
        raise PeftlabError(f"{spell('heartbeat')} {heartbeat_s}: use a number of seconds above 0")
    return Execution(storage, jobs, study, heartbeat_s)


def comparison_dir(out: str | None) -> Path:
    """--out, or a new runs/compare-<time> folder; made if missing."""
    from datetime import datetime

    folder = Path(out or f"runs/compare-{datetime.now():%Y%m%d-%H%M%S}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_spec(base: RunConfig, method: str, seed: int, name: str, **extra) -> dict:
    """One trial's settings (validated here, before anything runs)."""
    cfg = copy.deepcopy(base)
    cfg.method.name, cfg.train.seed = method, seed
    cfg.name = Path(name).name
    cfg.out = None  # each worker puts it in its own --out
    checked(cfg)
    return {"name": name, "method": method, "seed": seed, "config": cfg.to_dict(), **extra}


def plan(base: RunConfig, methods: list[str], seeds: list[int], tune: Tuning | None) -> list:
    """The final runs: method x seed; with --tune, each with its method's best settings
    and again with its default ones."""
    runs = []
    for method in methods:
        for seed in seeds:
            if tune is None:
                runs.append(run_spec(base, method, seed, f"{method}-seed{seed}"))
                continue
            runs.append(
                run_spec(
                    base, method, seed, f"{method}-seed{seed}", variant="tuned", tuned_from=method
                )
            )
            runs.append(
                run_spec(base, method, seed, f"{method}-default-seed{seed}", variant="default")
            )
    return runs


def plan_search(base: RunConfig, method: str, tune: Tuning, seed: int) -> list[dict]:
    """A method's tuning trials, validation only: its default settings first (so the
    pick is never worse on validation than the defaults; ties go to them), then the
    points of a Latin hypercube."""
    trial_base = copy.deepcopy(base)
    trial_base.train.score_on = "validation"
    ranges = tuning.space(method, tune.fields)
    defaults = tuning.defaults(base, method, list(ranges))
    ranges = {name: r.including(defaults[name]) for name, r in ranges.items()}
    points = [defaults, *tuning.latin_hypercube(ranges, tune.trials - 1, seed)]
    space = {
        n: {k: v for k, v in dataclasses.asdict(r).items() if k != "source"}
        for n, r in ranges.items()
    }
    return [
        run_spec(trial_base, method, seed, f"tune/{method}-trial{i}", params=params, space=space)
        for i, params in enumerate(points)
    ]


def protocol(base: RunConfig, tune: Tuning | None) -> RunConfig:
    """With --tune every run (trial, tuned, default) validates VALIDATIONS times and keeps
    its best weights, so a tuned and a default run differ only in the tuned settings."""
    if base.train.score_on != "test":
        raise PeftlabError(
            "--score-on validation is what compare gives its tuning trials (--tune); a "
            "comparison's own runs are scored on the test split: drop --score-on"
        )
    if tune is None:
        return base
    if base.train.lr is not None and "lr" in tune.fields:
        raise PeftlabError("--tune lr searches the learning rate; drop --lr")
    cfg = copy.deepcopy(base)
    if not cfg.train.eval_every and not cfg.train.validations:
        cfg.train.validations = VALIDATIONS
    return cfg


def start_searches(storage, study, base, methods, seed: int, tune: Tuning, beat):
    """One tuning study per method, its trials enqueued (a rerun adds only missing ones)."""
    asked = {"fields": tune.fields, "trials": tune.trials}
    before = study.user_attrs.get("tune")
    if before not in (None, asked):
        raise PeftlabError(
            f"this comparison was started with --tune {','.join(before['fields'])} --trials "
            f"{before['trials']}; rerun it with those, or choose a new --out"
        )
    study.set_user_attr("tune", asked)
    validation = TASK_SPECS[base.task.name].validation
    direction = "minimize" if validation == "loss" else "maximize"
    names = dict(study.user_attrs.get("searches", {}))
    names.update({method: f"{study.study_name}-tune-{method}" for method in methods})
    study.set_user_attr("searches", names)  # first: a joining worker never takes a
    for method in methods:  # tuning study for a comparison of its own
        search = studies.create_study(storage, names[method], beat, direction)
        studies.enqueue(search, plan_search(base, method, tune, seed), keep=SEARCH_STATES)


def run_all(base, methods, seeds, out: Path, execution: Execution, tune=None, log=say):
    """Run (or keep) every trial under `out`; return (records, failures, searches)."""
    url = studies.storage_url(out, execution.storage)
    storage = studies.open_storage(url, execution.heartbeat_s)
    name = execution.study or studies.study_name(out)
    study = studies.create_study(storage, name, execution.heartbeat_s)
    base = protocol(base, tune)
    runs = plan(base, methods, seeds, tune)
    if tune is not None:
        start_searches(storage, study, base, methods, seeds[0], tune, execution.heartbeat_s)
    for spec in runs:
        if finished(out / spec["name"]):
            log(f"== {spec['name']}: done already, kept")
    studies.enqueue(study, [r for r in runs if not finished(out / r["name"])])
    comparison = Comparison.open(url, storage, study, out)
    work(comparison, execution.jobs, log)
    return (*collect(comparison, runs), search_summaries(comparison))


def collect(comparison: Comparison, runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Each planned run's record (from its folder here, or as a worker elsewhere
    reported it to the storage), or why it has none."""
    records, failures = [], []
    trials = studies.trials_of(comparison.study)
    for spec in runs:
        run_dir = comparison.out / spec["name"]
        labels = {"variant": spec.get("variant")}
        if finished(run_dir):
            records.append(dict(RunRecord.open(run_dir), run_dir=str(run_dir), **labels))
            continue
        mine = [t for t in trials if t.user_attrs.get("name") == spec["name"]]
        latest = max(mine, key=lambda t: t.number) if mine else None
        outcome = (latest.user_attrs.get("outcome") or {}) if latest else {}
        if "record" in outcome:
            records.append({**outcome["record"], **labels})
            continue
        error = outcome.get("error") or f"not run ({latest.state.name if latest else 'no trial'})"
        failures.append(
            {
                "run_dir": str(run_dir),
                "method": spec["method"],
                "seed": spec["seed"],
                "error": error,
                **labels,
            }
        )
    return records, failures


def search_summaries(comparison: Comparison) -> dict:
    """Per method: every tuning trial (settings, state, validation scores), the best."""
    summaries = {}
    for method, search in comparison.searches.items():
        trials = [
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params or t.user_attrs.get("params", {}),
                "value": t.value,
                "validations": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            }
            for t in studies.trials_of(search)
        ]
        best = studies.best_params(search)
        summaries[method] = {
            "trials": trials,
            "best_params": best,
            "best_value": search.best_value if best else None,
            "direction": search.direction.name.lower(),
            "ranges": searched_ranges(method, studies.trials_of(search)),
        }
    return summaries


def searched_ranges(method: str, trials: list) -> dict:
    """The ranges a method's trials were drawn from (its own, widened to hold a user's
    default: recorded with each trial), with where each range comes from."""
    drawn = next((t.user_attrs["space"] for t in trials if "space" in t.user_attrs), {})
    return {
        name: {
            "range": tuning.Range(**fields).describe(),
            "source": tuning.space(method, [name])[name].source,
        }
        for name, fields in drawn.items()
    }


def load_records(run_dirs: list[Path]) -> list[dict]:
    records = []
    for run_dir in run_dirs:
        record = RunRecord.open(run_dir)
        if record.get("status") != "done":
            raise PeftlabError(f"run '{run_dir}' has not finished; resume it first")
        records.append(dict(record, run_dir=str(run_dir)))
    return records


def compare(
    base: RunConfig | None,
    methods: list[str],
    seeds: list[int],
    out: Path,
    run_dirs: list[Path],
    execution: Execution | None = None,
    tune: Tuning | None = None,
    log=say,
) -> dict:
    from peftlab.comparison.compare_report import write_compare_report

    records, failures, searches = load_records(run_dirs), [], {}
    if methods:
        if base.track.report_to:
            if not base.track.project:
                base = copy.deepcopy(base)
                base.track.project = out.resolve().name  # every run under one experiment
            prepare_shared(base.track.report_to, base.track.project)
        ran, failures, searches = run_all(
            base, methods, seeds, out, execution or Execution(), tune, log
        )
        if not ran:  # nothing ran: most likely a shared mistake
            raise PeftlabError(f"every run failed; the first: {failures[0]['error']}")
        records += ran
    if not records:
        raise PeftlabError("nothing to compare: give --methods, or run directories")
    board = leaderboard(records, failures, searches)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compare.json", board)
    write_compare_report(board, records, out)
    return board


def open_to_join(url: str, execution: Execution) -> tuple:
    """(storage, study) of the comparison a worker joins, beating as often as that
    comparison asks: a worker beating more slowly than the others' grace period would
    have its live runs judged dead and run twice."""
    storage = studies.open_storage(url, execution.heartbeat_s)
    study = studies.find_study(storage, execution.study)
    beat = study.user_attrs.get("heartbeat_s", execution.heartbeat_s)
    if beat == execution.heartbeat_s:
        return storage, study
    storage = studies.open_storage(url, beat)
    return storage, studies.find_study(storage, study.study_name)


def join(out: Path, execution: Execution, log=say) -> int:
    """`peftlab compare --worker`: run another comparison's waiting trials here."""
    url = studies.storage_url(out, execution.storage)
    storage, study = open_to_join(url, execution)
    log(f"worker for {study.study_name}: {execution.jobs} run(s) at once, run directories in {out}")
    return work(Comparison.open(url, storage, study, out), execution.jobs, log)
