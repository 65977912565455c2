"""One run of a comparison as a process of its own: its peak memory, its time and its
failure are its own, and a crash (a segfault, the kernel's out-of-memory killer) ends
only that run. It is the ordinary `peftlab run` code path, fed the run's settings as a
YAML file and the comparison's shared folder (runner/shared_cache.py).

The process is forked from multiprocessing's forkserver, which imports torch,
transformers and peft once per worker: a fresh interpreter spent ~5 s of a tiny trial
importing them (2-core EPYC), paid again by every trial. Forking before any of them ran
a kernel or touched a GPU is safe (no OpenMP team or CUDA context exists yet). Libraries
read some environment variables (HF_HUB_OFFLINE, HF_HOME, ...) once, when imported: a
run whose environment differs from the one the forkserver imported under gets a new
forkserver (a later comparison in the same Python session, with other settings), or,
while runs forked from the old one are still going, starts as a fresh
`python -m peftlab run`.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from peftlab.fsutil import write_text_atomic
from peftlab.runner.record import RECORD_FILE

PR_SET_PDEATHSIG = 1
PARENT_ENV = "PEFTLAB_PARENT_PID"
# What a run imports, imported once by the forkserver: datasets included (every run's
# cli.quiet_libraries imports it first thing: ~0.35 s), and matplotlib's figure and
# ticker (a run's report plots: ~0.5 s each time).
PRELOAD = ["peftlab.cli", "peftlab.runner.pipeline", "torch", "transformers", "peft", "accelerate"]
PRELOAD += ["datasets", "matplotlib.figure", "matplotlib.ticker"]
PRELOAD += ["peftlab.comparison.forkserver_ready"]
# Set per child by child_env(); any other difference means a stale forkserver.
PER_CHILD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PER_CHILD_ENV += ("CUDA_VISIBLE_DEVICES", PARENT_ENV)
# Read when a run reads them, never while importing, so a forkserver started under
# other values serves as well: peftlab's home (assets, the matmul peak) and pytest's
# marker of the current test (a new value per test: each restarted the forkserver,
# ~6 s of imports on a 2-core EPYC).
READ_AT_RUN_TIME = ("PEFTLAB_HOME", "PEFTLAB_DEBUG", "PEFTLAB_ADMIN_TOKEN", "PYTEST_CURRENT_TEST")
# The trackers' own settings: a run imports its tracker itself (never preloaded).
TRACKER_ENV_PREFIXES = ("MLFLOW_", "TRACKIO_", "WANDB_")


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
    # (which halved a lone run's speed: training/threads.py).
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
    argv = ["run", "--config", str(settings), "--shared-dir", str(shared)]
    if trial is not None:
        argv += ["--trial", json.dumps(trial)]
    env = child_env(threads, gpu)
    if FORKSERVER.acquire(os.environ):
        try:
            returncode = forked(argv, log_path, env)
        finally:
            FORKSERVER.release()
    else:
        returncode = fresh_interpreter(argv, log_path, env)
    record_path = run_dir / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if returncode == 0 and record.get("status") in ("done", "pruned"):
        return {"record": record}
    return {"error": describe_exit(returncode, log_path), "returncode": returncode}


def fresh_interpreter(argv: list[str], log_path: Path, env: dict) -> int:
    command = [sys.executable, "-m", "peftlab", *argv]
    with open(log_path, "ab") as log:
        return subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            check=False,
        ).returncode


def forked(argv: list[str], log_path: Path, env: dict) -> int:
    """The run in a process forked from the forkserver; its exit status (-N: signal N)."""
    process = FORKSERVER.context().Process(target=forked_main, args=(argv, str(log_path), env))
    process.start()
    process.join()
    return process.exitcode


def forked_main(argv: list[str], log_path: str, env: dict) -> None:
    """In the forked process: the run's environment and log, then `python -m peftlab
    run ...` as a fresh interpreter would run it (runpy: the command line is this
    module's caller, not one of its imports). Its parent is the forkserver, which exits
    when the worker does; bind_to_parent() makes the kernel end the run then."""
    os.environ.clear()
    os.environ.update(env, **{PARENT_ENV: str(os.getppid())})
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(log, stream.fileno())
    os.close(log)
    sys.argv = ["peftlab", *argv]
    runpy.run_module("peftlab", run_name="__main__", alter_sys=True)


class Forkserver:
    """multiprocessing's forkserver with PRELOAD imported, and the environment it was
    started under. A run in another environment restarts it when no run forked from it
    is alive (stopping it would end them: bind_to_parent); else it cannot use it."""

    def __init__(self):
        self.enabled = True  # False: every run a fresh interpreter (bench/child_start.py)
        self.env: dict | None = None
        self.in_flight = 0
        self.lock = threading.Lock()

    @staticmethod
    def comparable(env) -> dict:
        ignored = PER_CHILD_ENV + READ_AT_RUN_TIME
        return {
            k: v
            for k, v in env.items()
            if k not in ignored and not k.startswith(TRACKER_ENV_PREFIXES)
        }

    def acquire(self, env) -> bool:
        """True: fork the run from the forkserver (call release() after it)."""
        wanted = self.comparable(env)
        with self.lock:
            if not self.enabled:
                return False
            if self.env != wanted:
                if self.in_flight or (self.env is not None and not self.stop_started()):
                    return False
                self.env = wanted
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def stop_started(self) -> bool:
        """Stop the running forkserver, so the next fork starts a new one under
        the current environment. multiprocessing offers no public way; its own tests use
        _stop() (Python 3.8-3.14): without it, False (the caller starts a fresh process)."""
        stop = getattr(multiprocessing.forkserver._forkserver, "_stop", None)
        if stop is None:
            return False
        stop()
        return True

    def context(self):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx


FORKSERVER = Forkserver()


def describe_exit(code: int, log_path: Path) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}; its output is in {log_path}"
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("peftlab: error:")]
    last = (errors or lines or [f"exit status {code}"])[-1]
    return last.removeprefix("peftlab: error: ")
