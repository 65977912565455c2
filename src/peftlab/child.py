"""One run of a comparison as a process of its own: its peak memory, its time and its
failure are its own, and a crash (a segfault, the kernel's out-of-memory killer) ends
only that run. It is the ordinary `peftlab run` code path, fed the run's settings as a
YAML file and the comparison's shared folder (shared_cache.py)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from peftlab.fsutil import write_text_atomic
from peftlab.record import RECORD_FILE

PR_SET_PDEATHSIG = 1
PARENT_ENV = "PEFTLAB_PARENT_PID"


def bind_to_parent() -> None:
    """Called first thing in a child: the kernel kills it when its worker dies (Linux),
    so a killed worker leaves no orphan run holding the run directory's lock."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: a killed worker's run goes on by itself
    if os.getppid() != int(parent):  # the worker died before we could ask
        os._exit(1)


def child_env(threads: int, gpu: int | None) -> dict:
    """The CPU share (threads) and GPU of one child; everything else as ours."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    # Each child has its share of the cores, so its threads need not wait passively
    # (which halved a lone run's speed: threads.py).
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    env[PARENT_ENV] = str(os.getpid())
    return env


def run_child(
    config: dict, run_dir: Path, shared: Path, threads: int, gpu: int | None, trial=None
) -> dict:
    """Run `peftlab run` for `config` in `run_dir`; return its record or how it failed.
    `trial`: a tuning trial's Optuna address, to report its validation scores to."""
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = run_dir / "settings.yaml"
    write_text_atomic(settings, yaml.safe_dump({**config, "out": str(run_dir)}, sort_keys=False))
    log_path = run_dir / "child.log"
    command = [sys.executable, "-m", "peftlab", "run", "--config", str(settings)]
    command += ["--shared-dir", str(shared)]
    if trial is not None:
        command += ["--trial", json.dumps(trial)]
    with open(log_path, "ab") as log:
        proc = subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(threads, gpu),
            check=False,
        )
    record_path = run_dir / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if proc.returncode == 0 and record.get("status") in ("done", "pruned"):
        return {"record": record}
    return {"error": describe_exit(proc.returncode, log_path), "returncode": proc.returncode}


def describe_exit(code: int, log_path: Path) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}; its output is in {log_path}"
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("peftlab: error:")]
    last = (errors or lines or [f"exit status {code}"])[-1]
    return last.removeprefix("peftlab: error: ")
