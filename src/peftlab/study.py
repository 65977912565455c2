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


def create_study(storage, name: str, heartbeat_s: float):
    """The comparison's study; it records the heartbeat interval every worker must keep
    (a worker beating more slowly than the others' grace period would look dead)."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
    study.set_user_attr("heartbeat_s", heartbeat_s)
    return study


def join_study(url: str, name: str | None):
    """(storage, study) for a worker: the study's own heartbeat interval."""
    study = find_study(open_storage(url), name)
    storage = open_storage(url, study.user_attrs.get("heartbeat_s", HEARTBEAT_S))
    return storage, find_study(storage, study.study_name)


def find_study(storage, name: str | None):
    """The named study, or the storage's only peftlab comparison."""
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    ours = [n for n in names if n.startswith(STUDY_PREFIX)]
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


def enqueue(study, runs: list[dict]) -> int:
    """Enqueue each planned run that no trial waits for or runs yet; return how many."""
    from optuna.trial import TrialState

    pending = {
        t.user_attrs.get("name") for t in trials_of(study, (TrialState.WAITING, TrialState.RUNNING))
    }
    added = 0
    for spec in runs:
        if spec["name"] not in pending:
            study.enqueue_trial({}, user_attrs=spec, skip_if_exists=False)
            added += 1
    return added


def claim(study, storage) -> int | None:
    """Take the next waiting trial (atomically: one worker wins each); None if none."""
    from optuna.trial import TrialState

    for trial in trials_of(study, (TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number
        )
        if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
            return trial_id
    return None


def anything_running(study) -> bool:
    from optuna.trial import TrialState

    return bool(trials_of(study, (TrialState.RUNNING,)))


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


def finish(storage, trial_id: int, outcome: dict) -> None:
    """COMPLETE with the run's metric, or FAIL with how it failed (a rerun retries it)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        storage.set_trial_user_attr(trial_id, "outcome", outcome)
        if "error" in outcome:
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        else:
            value = outcome.get("value", 0.0)
            storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE, values=[value])
    except UpdateFinishedTrialError:
        pass  # judged dead (no heartbeat in time) and retried: the retry reports it


def fail_stale(study) -> None:
    from optuna.storages import fail_stale_trials

    fail_stale_trials(study)
