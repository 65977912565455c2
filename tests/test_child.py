"""Runs of a comparison fork from one forkserver; a later comparison in the same Python
session with another environment gets a forkserver of its own, not a slow fresh
interpreter per run, and never stops a forkserver whose runs are still going."""

import multiprocessing.forkserver
import os

from peftlab.comparison import child


def forkserver_pid():
    return multiprocessing.forkserver._forkserver._forkserver_pid


def test_a_new_environment_restarts_the_forkserver(tmp_path, monkeypatch):
    # What the forkserver imports is not the point here: the light import list keeps
    # each restart to a second instead of ~8 s of torch, transformers and peft.
    monkeypatch.setattr(child, "PRELOAD", ["peftlab.cli"])
    pids = []
    for mark in ("one", "two"):
        monkeypatch.setenv("PEFTLAB_TEST_MARK", mark)
        assert child.FORKSERVER.acquire(os.environ)  # not a fresh interpreter per run
        try:
            log = tmp_path / f"{mark}.log"
            assert child.forked(["--version"], log, child.child_env(1, None)) == 0
        finally:
            child.FORKSERVER.release()
        assert log.read_text().startswith("peftlab ")
        pids.append(forkserver_pid())
    assert pids[0] != pids[1] and None not in pids


def test_a_forkserver_with_runs_in_flight_is_never_stopped(monkeypatch):
    stopped = []
    server = child.Forkserver()
    monkeypatch.setattr(server, "stop_started", lambda: stopped.append(1) or True)
    assert server.acquire({"A": "1"})
    assert not server.acquire({"A": "2"})  # a run is in flight: a fresh interpreter
    assert server.acquire({"A": "1", child.PER_CHILD_ENV[0]: "3"})  # thread counts differ
    server.release(), server.release()
    assert server.acquire({"A": "2"}) and stopped == [1]
    server.enabled = False
    assert not server.acquire({"A": "2"})
