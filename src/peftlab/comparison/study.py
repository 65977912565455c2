"""A comparison's runs as an Optuna study: the storage is the one source of truth.

Every planned run is a trial enqueued with its settings as user attributes; any process
that can reach the storage (this machine's `--jobs`, or `peftlab compare --worker` on
another machine) claims the next waiting trial, keeps its heartbeat while the run is
going, and records the result. A worker that dies stops beating: Optuna fails the trial
after the grace period and RetryFailedTrialCallback enqueues it again for another worker.
The default storage is an SQLite file in the comparison folder; any URL Optuna takes
(PostgreSQL for several machines) works. Only Optuna's public storage API is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from pathlib import Path

from peftlab.errors import PeftlabError

STUDY_PREFIX = "peftlab-compare"
HEARTBEAT_S = 30.0  # a dead worker's trial is retried this many seconds x GRACE later
GRACE = 4
RETRIES = 2


def storage_url(out: Path, url: str | None) -> str:
    return url or f"sqlite:///{Path(out).resolve() / 'study.db'}"


def open_storage(url: str, heartbeat_s: float = HEARTBEAT_S):
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = {"pool_pre_ping": True}
    if url.startswith("sqlite"):  # several processes write: wait for the file lock
        engine["connect_args"] = {"timeout": 60}
    try:
        return RDBStorage(
            url,
            heartbeat_interval=max(1, round(heartbeat_s)),
            grace_period=max(2, round(heartbeat_s * GRACE)),
            failed_trial_callback=RetryFailedTrialCallback(max_retry=RETRIES),
            engine_kwargs=engine,
        )
    except Exception as exc:  # a wrong URL, a missing driver, a server that is down
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeftlabError(f"--storage {url}: cannot open it ({first})") from None


def study_name(out: Path) -> str:
    return f"{STUDY_PREFIX}-{Path(out).resolve().name}"


def create_study(storage, name: str, heartbeat_s: float, direction: str = "maximize"):
    """The comparison's study; it records the heartbeat interval every worker must keep
    (a worker beating more slowly than the others' grace period would look dead)."""
    import optuna

    study = optuna.create_study(
        storage=storage, study_name=name, load_if_exists=True, direction=direction
    )
    study.set_user_attr("heartbeat_s", heartbeat_s)
    return study


def load_study(storage, name: str):
    """A study with the comparison's pruner (Optuna keeps pruners out of the storage)."""
    import optuna

    return optuna.load_study(storage=storage, study_name=name, pruner=make_pruner())


STARTUP_TRIALS = 2  # trials of a method that always run to the end: the yardstick
REDUCTION = 3  # successive halving keeps the best third at each rung


def make_pruner():
    """Asynchronous successive halving (ASHA: Li et al. 2020) on the validation scores,
    rungs at validations 1, 3, 9...; a trial must be in the best third of those that
    reached its rung. Optuna's version judges the second trial against the first alone,
    so the first STARTUP_TRIALS trials of a method only set the bar (their rung scores
    are recorded, never pruned), like MedianPruner's n_startup_trials."""
    from optuna.pruners import BasePruner, SuccessiveHalvingPruner

    class AfterStartup(BasePruner):
        def __init__(self):
            self.halving = SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION)

        def prune(self, study, trial) -> bool:
            verdict = self.halving.prune(study, trial)  # also records the rung score
            return verdict and trial.number >= STARTUP_TRIALS

    return AfterStartup()


class TrialReporter:
    """In a tuning trial's own process: each validation score goes to its Optuna trial,
    and the pruner may stop the run (never at its last validation: that one is done)."""

    def __init__(self, url: str, study_name: str, number: int):
        import optuna

        storage = open_storage(url)
        self.study = load_study(storage, study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study_name), number
        )
        self.trial = optuna.Trial(self.study, trial_id)

    def __call__(self, index: int, value: float, final: bool) -> None:
        from peftlab.errors import TrialPruned

        self.trial.report(value, index)
        if not final and self.trial.should_prune():
            raise TrialPruned(index, value)


def find_study(storage, name: str | None):
    """The named study, or the storage's only peftlab comparison."""
    import optuna

    summaries = optuna.get_all_study_summaries(storage)
    names = [s.study_name for s in summaries]
    # A comparison's tuning studies are named in its "searches"; they are not comparisons.
    searches = {n for s in summaries for n in s.user_attrs.get("searches", {}).values()}
    ours = [n for n in names if n.startswith(STUDY_PREFIX) and n not in searches]
    if name is None and len(ours) == 1:
        name = ours[0]
    if name not in names:
        if len(ours) > 1:
            raise PeftlabError(f"the storage holds comparisons {ours}; pick one with --study")
        raise PeftlabError(
            f"the storage holds no comparison{f' {name!r}' if name else ''}; start one with "
            "`peftlab compare --methods ... --storage URL`, then join it with the same --storage"
        )
    return optuna.load_study(storage=storage, study_name=name)


def trials_of(study, states=None) -> list:
    return study.get_trials(deepcopy=False, states=states)


def enqueue(study, runs: list[dict], keep=("WAITING", "RUNNING")) -> int:
    """Enqueue each planned run that has no trial in a `keep` state; return how many.
    A tuning trial's planned settings are its fixed parameters."""
    from optuna.trial import TrialState

    states = tuple(TrialState[name] for name in keep)
    pending = {t.user_attrs.get("name") for t in trials_of(study, states)}
    added = 0
    for spec in runs:
        if spec["name"] not in pending:
            study.enqueue_trial(spec.get("params", {}), user_attrs=spec, skip_if_exists=False)
            added += 1
    return added


def claim(study, storage, ready=lambda attrs: True) -> int | None:
    """Take the next waiting trial that is `ready` (atomically: one worker wins each);
    None if there is none."""
    from optuna.trial import TrialState

    for trial in trials_of(study, (TrialState.WAITING,)):
        if not ready(trial.user_attrs):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number
        )
        with claim_lock(storage):
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return trial_id
    return None


@contextlib.contextmanager
def claim_lock(storage):
    """Optuna's WAITING -> RUNNING check reads the trial with SELECT ... FOR UPDATE, which
    SQLite ignores: two processes could both see it waiting and both take it. On SQLite
    (one machine by nature) a lock file next to the database serialises the claims;
    PostgreSQL and MySQL lock the row themselves."""
    url = str(getattr(storage, "url", ""))
    if not url.startswith("sqlite:///"):
        yield
        return
    with open(url.removeprefix("sqlite:///") + ".claim-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def pending(study) -> bool:
    """Whether any trial of the study still waits or runs."""
    from optuna.trial import TrialState

    return bool(trials_of(study, (TrialState.WAITING, TrialState.RUNNING)))


def search_over(study) -> bool:
    """A tuning study none of whose trials waits or runs any more."""
    return not pending(study)


def record_params(study, trial_id: int, params: dict, space: dict) -> dict:
    """Give a claimed tuning trial its planned settings through Optuna's suggest API, so
    the storage holds them with their distributions (for Optuna's own tools too)."""
    import optuna

    from peftlab.comparison.tuning import Range, distribution

    trial = optuna.Trial(study, trial_id)
    chosen = {}
    for name in params:  # enqueued as the trial's fixed parameters: suggest returns them
        d = distribution(Range(**space[name]))
        if isinstance(d, optuna.distributions.IntDistribution):
            chosen[name] = trial.suggest_int(name, d.low, d.high, log=d.log)
        else:
            chosen[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
    return chosen


def best_params(study) -> dict | None:
    """The settings of a search's best finished trial (None if none finished)."""
    from optuna.trial import TrialState

    complete = trials_of(study, (TrialState.COMPLETE,))
    if not complete:
        return None
    return study.best_trial.params


@contextlib.contextmanager
def heartbeat(storage, trial_id: int):
    """Record the trial's heartbeat every interval while the block runs."""
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or HEARTBEAT_S

    def beat() -> None:
        while not stop.is_set():
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # a busy or briefly unreachable database: beat on
                logging.getLogger("peftlab").warning("heartbeat not recorded: %s", exc)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def finish(storage, trial_id: int, outcome: dict) -> bool:
    """COMPLETE with the run's metric, PRUNED, or FAIL with how it failed (a rerun
    retries it). False if the trial was no longer ours to finish: judged dead (no
    heartbeat in time) and retried, the retry reports it."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        storage.set_trial_user_attr(trial_id, "outcome", outcome)
        if "error" in outcome:
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        elif outcome.get("pruned"):
            storage.set_trial_state_values(trial_id, state=TrialState.PRUNED)
        else:
            value = outcome.get("value", 0.0)
            storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE, values=[value])
    except UpdateFinishedTrialError:
        return False
    return True


def fail_stale(study) -> None:
    from optuna.storages import fail_stale_trials

    fail_stale_trials(study)
