"""Progress without a terminal, time-based checkpoints, and the CPU threads a run uses."""

import types

import pytest

from peftlab.training import threads
from peftlab.training.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def state(step, seconds):
    history = [{"loss": 1.0 / (i + 1)} for i in range(step)]
    return types.SimpleNamespace(
        step=step, train_seconds=seconds, samples=8 * step, history=history
    )


def test_a_line_every_tenth_of_the_steps_and_at_least_every_30_seconds():
    clock, lines = Clock(), []
    args = types.SimpleNamespace(checkpoint_every=25, checkpoint_minutes=5.0)
    progress = Progress(1000, args, lines.append, clock=clock)
    for step in range(1, 8):  # slow steps: 12 s each, far from step 100
        clock.now += 12
        progress.step_done(state(step, 12.0 * step))
    assert len(lines) == 2  # at 36 s and 72 s
    assert lines[0].startswith("step 3/1000: loss ")
    assert "0.67 samples/s" in lines[0] and "3 h 19 min left" in lines[0]
    progress.step_done(state(100, 1200.0))  # a tenth of the steps: due at once
    assert lines[-1].startswith("step 100/1000")


def test_checkpoints_by_steps_and_by_minutes_and_never_with_zero_steps():
    clock = Clock()
    args = types.SimpleNamespace(checkpoint_every=25, checkpoint_minutes=5.0)
    progress = Progress(100, args, print, clock=clock)
    clock.now = 200
    assert not progress.checkpoint_due(3, done=False)
    clock.now = 301  # five minutes since the start, long before step 25
    assert progress.checkpoint_due(4, done=False)
    assert not progress.checkpoint_due(5, done=False)  # the clock restarted
    assert progress.checkpoint_due(25, done=False)
    assert progress.checkpoint_due(26, done=True)
    several = Progress(100, args, print, processes=2, clock=clock)
    clock.now = 10_000  # a group's clocks disagree: steps decide alone
    assert not several.checkpoint_due(4, done=False)
    never = Progress(100, types.SimpleNamespace(checkpoint_every=0, checkpoint_minutes=5.0), print)
    assert not never.checkpoint_due(100, done=True)


def test_durations_read_like_a_person_wrote_them():
    assert [duration(s) for s in (3.4, 245, 3720)] == ["3 s", "4 min 05 s", "1 h 02 min"]


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota_v1_and_v2(files, quota, tmp_path):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads.cgroup_quota(tmp_path) == quota


def test_threads_follow_the_usable_cores_unless_told(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_fixed_in_process", 0)  # undone after the test
    monkeypatch.setattr(threads, "cgroup_quota", lambda root=None: 1.5)
    try:
        chosen = threads.configure(0)
        assert chosen["threads"] == 1 == torch.get_num_threads()  # 1.5 CPUs of quota
        assert chosen["chosen_by"].startswith("cores left free")
        assert threads.configure(2)["chosen_by"] == "--threads"
        assert torch.get_num_threads() == 2
        assert threads.core_share(2).probe is None  # a fixed count is left alone
        assert threads.core_share(0).probe is None  # ...by evaluation, too: --threads 2
        threads.configure(0)
        assert threads.core_share(0).probe is threads.running_elsewhere
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads.core_share(0).probe is None
    finally:
        torch.set_num_threads(before)


def test_the_thread_count_gives_way_to_other_busy_processes_and_comes_back():
    import torch

    before = torch.get_num_threads()
    clock, others = Clock(), [0]
    share = threads.CoreShare(4, every_s=1.0, window=3, probe=lambda: others[0], clock=clock)
    seen = []
    torch.set_num_threads(4)
    try:
        with share:
            torch.set_num_threads(2)  # the count inside training...
        assert torch.get_num_threads() == 4  # ...is undone after it
        for second, busy in enumerate([0, 0, 3, 3, 3, 3, 0, 0, 0, 9]):
            others[0] = busy
            clock.now = float(second)
            share.check()
            share.check()  # not due again within the second: no second sample
            seen.append(torch.get_num_threads())
        # averaged over the last 3 samples: 0 -> 1 -> 2 -> 3 others, then back down
        assert seen == [4, 4, 3, 2, 1, 1, 2, 3, 4, 1]
        assert share.changes == 7
    finally:
        torch.set_num_threads(before)


def test_evaluation_batches_give_way_to_other_busy_processes(monkeypatch):
    import torch

    from peftlab.training.evaluate import map_batches

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_fixed_in_process", 0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "running_elsewhere", lambda: 1)  # a burner on one core
    torch.set_num_threads(2)
    try:
        seen = map_batches([1, 2, 3], [1, 1, 1], 1, lambda xs: [torch.get_num_threads()] * len(xs))
        assert seen == [1, 1, 1]  # the batches ran on the free core...
        assert torch.get_num_threads() == 2  # ...and the count is back after them
        monkeypatch.setattr(threads, "_fixed_in_process", 2)  # --threads 2: left alone
        assert map_batches([1], [1], 1, lambda xs: [torch.get_num_threads()]) == [2]
    finally:
        torch.set_num_threads(before)


def test_running_threads_elsewhere_from_proc(tmp_path):
    (tmp_path / "stat").write_text("cpu  1 2 3\nprocs_running 5\nprocs_blocked 0\n")
    for tid, state in [(1, "R"), (2, "S"), (3, "R")]:
        (tmp_path / "task" / str(tid)).mkdir(parents=True)
        (tmp_path / "task" / str(tid) / "stat").write_text(f"{tid} (py thon) {state} 1 2 3\n")
    assert threads.running_elsewhere(tmp_path / "stat", tmp_path / "task") == 3
    assert threads.running_elsewhere(tmp_path / "missing", tmp_path / "task") is None
