"""A comparison spread over worker processes through one Optuna storage (SQLite, and a
real PostgreSQL server):
every run is claimed exactly once, and a worker killed mid-run has its run retried and
finished by another."""

import functools
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
import tiny
from optuna.trial import TrialState

RUN = ["--epochs", "1", "--batch-size", "16", "--precision", "fp32", *tiny.ALL_ROWS]
HEARTBEAT = ["--heartbeat", "2"]  # a silent run is retried after 8 s
# The joining workers below are started without --heartbeat: they must take this one.
SLOW_HEARTBEAT = ["--heartbeat", "5"]


def peftlab(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "peftlab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def trials(storage: str) -> list:
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(storage=storage, study_name=summary.study_name).trials


def wait_for(condition, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if condition():
                return
        except Exception:  # the folder, database or study is not there yet
            pass
        time.sleep(0.3)
    raise AssertionError("timed out")


def every_trial(storage: str) -> list:
    """The trials of every study in the storage (a tuned comparison has one per method)."""
    return [
        trial
        for summary in optuna.get_all_study_summaries(storage)
        for trial in optuna.load_study(storage=storage, study_name=summary.study_name).trials
    ]


def completed_names(storage: str) -> list[str]:
    return sorted(t.user_attrs["name"] for t in trials(storage) if t.state == TrialState.COMPLETE)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server (Debian's package; .ci/run installs it), started in a
    temporary folder on a free port for this session."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    bin_dir = Path(found[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="peftlab-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(data, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "peftlab"])
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    run([*pg_ctl, "-o", options, "-l", str(data / "server.log"), "-w", "start"])
    yield f"postgresql://peftlab@127.0.0.1:{port}/postgres"
    run([*pg_ctl, "-m", "fast", "-w", "stop"])
    shutil.rmtree(data, ignore_errors=True)


def test_a_worker_beats_as_often_as_its_comparison_asks(tmp_path):
    """A worker started without --heartbeat (30 s) joins a comparison that judges runs
    dead after 4 x 5 s: it must beat every 5 s, or its live runs are run twice."""
    from peftlab.comparison import study as studies
    from peftlab.comparison.compare import Execution, open_to_join

    url = f"sqlite:///{tmp_path / 'study.db'}"
    studies.create_study(studies.open_storage(url, 5.0), "peftlab-compare-x", 5.0)
    storage, study = open_to_join(url, Execution(url, 1, None, 30.0))
    assert storage.get_heartbeat_interval() == 5 and study.study_name == "peftlab-compare-x"


@pytest.mark.processes
def test_two_workers_run_every_trial_exactly_once(
    postgres_url, tiny_llama, sentiment_csv, tmp_path, busy_cpus
):
    """With every core busy: a live run is never judged dead and run again. On the real
    PostgreSQL server; on SQLite the tuned comparison below proves the same, as busy."""
    out, elsewhere = tmp_path / "cmp", tmp_path / "worker"
    storage = postgres_url
    coordinator = peftlab(
        "compare", "--methods", "lora,full", "--seeds", "0,1", "--storage", storage,
        *tiny.where(tiny_llama, sentiment_csv, out), *RUN, *SLOW_HEARTBEAT,
    )  # fmt: skip
    wait_for(lambda: len(trials(storage)) == 4)
    worker = peftlab("compare", "--worker", "--storage", storage, "--out", str(elsewhere))
    worker_out, _ = worker.communicate(timeout=300)
    coordinator_out, _ = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 0, coordinator_out
    assert worker.returncode == 0, worker_out
    names = ["full-seed0", "full-seed1", "lora-seed0", "lora-seed1"]
    assert completed_names(storage) == names and len(trials(storage)) == 4
    by_worker = sorted(p.name for p in elsewhere.iterdir() if (p / "run.json").is_file())
    by_coordinator = sorted(p.name for p in out.iterdir() if (p / "run.json").is_file())
    assert by_worker and by_coordinator  # both took a share
    assert sorted(by_worker + by_coordinator) == names  # and nothing ran twice
    board = json.loads((out / "compare.json").read_text())
    assert {row["method"]: row["seeds"] for row in board["rows"]} == {
        "lora": [0, 1],
        "full": [0, 1],
    }


@pytest.mark.processes
def test_a_killed_workers_run_is_retried_by_another(tiny_llama, sentiment_csv, tmp_path):
    out = tmp_path / "cmp"
    storage = f"sqlite:///{out / 'study.db'}"
    argv = [
        "compare", "--methods", "lora", "--seeds", "0,1,2",
        *tiny.where(tiny_llama, sentiment_csv, out), *RUN, *HEARTBEAT,
    ]  # fmt: skip
    first = peftlab(*argv)
    wait_for(lambda: any(t.state == TrialState.RUNNING for t in trials(storage)))
    time.sleep(1.5)  # mid-run: its child is loading the model
    descendants = psutil.Process(first.pid).children(recursive=True)
    assert descendants  # the forkserver and the run forked from it
    os.kill(first.pid, signal.SIGKILL)  # its child run dies with it (PR_SET_PDEATHSIG)
    first.communicate()
    _, alive = psutil.wait_procs(descendants, timeout=30)
    assert not alive, f"orphaned: {[p.cmdline() for p in alive]}"
    worker = peftlab("compare", "--worker", "--storage", storage, "--out", str(out), *HEARTBEAT)
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output
    assert completed_names(storage) == ["lora-seed0", "lora-seed1", "lora-seed2"]
    failed = [t for t in trials(storage) if t.state == TrialState.FAIL]
    assert len(failed) == 1  # the killed one, failed by its missing heartbeat...
    retried = [t for t in trials(storage) if t.system_attrs.get("failed_trial") is not None]
    assert [t.system_attrs["failed_trial"] for t in retried] == [failed[0].number]  # ...rerun
    rerun = peftlab(*argv)  # the report from what the storage and folders hold
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert output.count("done already, kept") == 3
    board = json.loads((out / "compare.json").read_text())
    assert board["rows"][0]["seeds"] == [0, 1, 2] and not board["failures"]


@pytest.mark.processes
def test_a_worker_joins_a_tuned_comparison(tiny_llama, sentiment_csv, tmp_path, busy_cpus):
    """A worker started without --study finds the comparison (not one of its tuning
    studies), takes tuning trials and final runs, and each runs exactly once."""
    out, elsewhere = tmp_path / "cmp", tmp_path / "worker"
    storage = f"sqlite:///{out / 'study.db'}"
    coordinator = peftlab(
        "compare", "--methods", "lora", "--seeds", "0", "--tune", "lr", "--trials", "2",
        "--storage", storage, *tiny.where(tiny_llama, sentiment_csv, out), *RUN,
        *SLOW_HEARTBEAT,
    )  # fmt: skip
    wait_for(lambda: len(every_trial(storage)) == 4)  # 2 tuning trials, tuned and default runs
    worker = peftlab("compare", "--worker", "--storage", storage, "--out", str(elsewhere))
    worker_out, _ = worker.communicate(timeout=300)
    coordinator_out, _ = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 0, coordinator_out
    assert worker.returncode == 0, worker_out
    ran = every_trial(storage)
    assert len(ran) == 4 and {t.state for t in ran} <= {TrialState.COMPLETE, TrialState.PRUNED}
    expected = ["lora-default-seed0", "lora-seed0", *(f"tune/lora-trial{i}" for i in range(2))]
    assert sorted(t.user_attrs["name"] for t in ran) == expected
    records = sorted(str(p.parent.relative_to(d)) for d in (out, elsewhere)
                     for p in d.glob("**/run.json") if "shared" not in p.parts)  # fmt: skip
    assert records == expected  # nothing ran twice...
    assert any(elsewhere.glob("**/run.json"))  # ...and the worker took a share
    board = json.loads((out / "compare.json").read_text())
    (row,) = board["rows"]
    assert not board["failures"], coordinator_out  # the report holds every run...
    assert row["lr"] == board["searches"]["lora"]["best_params"]["lr"]  # ...the tuned one
