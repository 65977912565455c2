"""How many CPU threads a run uses, and how they share the cores.

torch starts one thread per core of the machine, but a process may be allowed fewer
(its CPU affinity: taskset, a container's cpuset; its cgroup CPU quota: docker --cpus,
Kubernetes limits), and other processes may want the same cores. OpenMP threads that
find no work spin before they sleep, so two runs with a team of 2 threads each on 2
cores spend their time spinning for a core the other holds. Measured on 2 cores (AMD
EPYC, MiniLM + LoRA, `bench/busy_machine.py`): alone 66-74 samples/s with OpenMP's
default waiting; two identical runs side by side 9.8-14.5 samples/s each (4.8-7.6x
slower, where the fair share is 2x). OMP_WAIT_POLICY=PASSIVE fixed the pair (41-58
each) but halved the run alone (30-36: on this VM a sleeping thread's wake-up costs more
than a step's small parallel regions), and GOMP_SPINCOUNT=10000 lost both ways.

So the waiting stays OpenMP's own, and the thread count follows the cores left free:
the cores this process may use, less the threads other processes are running
(/proc/stat's procs_running minus our own running threads, averaged over the last few
seconds), checked between training steps and between evaluation batches (scoring and
generating on a shared core slowed 5-8x the same way). Alone a run uses every core; beside
another busy run each gets its share and no thread spins for a core it cannot have.
`--threads N` (or OMP_NUM_THREADS, as `compare --jobs` sets for its children) fixes the
count. run.json records the choice and how often the count changed.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # the user's, read by OpenMP
# The count this process was told to keep by configure() (0: peftlab chooses). Global
# because torch's thread count it mirrors is global to the process.
_fixed_in_process = 0


def describe_policy() -> str:
    given = [f"{name}={os.environ[name]}" for name in WAIT_SETTINGS if os.environ.get(name)]
    return ", ".join(given) or "OpenMP default"


def usable_cores() -> int:
    """The cores this process may run on: its affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup may use per period, or None without a limit
    (cgroup v2 `cpu.max`: "max 100000" or "200000 100000"; v1 cfs_quota/cfs_period)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def fixed_count(requested: int) -> int:
    """The count the user fixed (`--threads`, else OMP_NUM_THREADS), or 0: peftlab's."""
    return requested or int(os.environ.get("OMP_NUM_THREADS") or 0)


def configure(requested: int) -> dict:
    """Set torch's thread count (`requested`, or 0 for the usable cores); what was chosen."""
    import torch

    global _fixed_in_process
    cores = usable_cores()
    fixed = fixed_count(requested)
    _fixed_in_process = fixed
    torch.set_num_threads(fixed or cores)
    if requested:
        chosen_by = "--threads"
    elif fixed:
        chosen_by = "OMP_NUM_THREADS"
    else:
        chosen_by = "cores left free by other processes, checked between steps"
    return {
        "threads": fixed or cores,
        "chosen_by": chosen_by,
        "usable_cores": cores,
        "omp_wait_policy": describe_policy(),
    }


def running_elsewhere(stat: Path = Path("/proc/stat"), own: Path = Path("/proc/self/task")):
    """Threads running or runnable on the machine now, less this process's own; None
    where /proc cannot tell (not Linux)."""
    try:
        line = next(x for x in stat.read_text().splitlines() if x.startswith("procs_running"))
        total = int(line.split()[1])
        mine = 0
        for task in own.iterdir():
            try:
                mine += (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
            except (OSError, IndexError):
                continue  # a thread that ended meanwhile
    except (OSError, StopIteration, ValueError):
        return None
    return max(0, total - mine)


def core_share(requested: int = 0) -> CoreShare:
    """The governor of a training or evaluation loop: idle when the user fixed the count
    (`requested`, OMP_NUM_THREADS, or what configure() was told for this process)."""
    if fixed_count(requested) or _fixed_in_process:
        return CoreShare(usable_cores(), probe=None)
    return CoreShare(usable_cores(), probe=running_elsewhere)


class CoreShare:
    """Between training steps or evaluation batches: torch's thread count kept to the
    cores other processes leave free, never above the count it found on entry (see the
    module docstring); without a probe, it leaves the count alone. `check()` is cheap
    when not due."""

    def __init__(
        self,
        cores: int,
        every_s: float = 1.0,
        window: int = 5,
        probe=running_elsewhere,
        clock=time.monotonic,
    ):
        self.cores, self.every_s, self.probe, self.clock = cores, every_s, probe, clock
        self.samples: deque[int] = deque(maxlen=window)
        self.last = -math.inf
        self.changes = 0
        self.initial: int | None = None

    def __enter__(self) -> CoreShare:
        import torch

        self.initial = torch.get_num_threads()
        self.cores = min(self.cores, self.initial)  # a count set lower stays the ceiling
        return self

    def __exit__(self, *exc) -> None:
        """The count as it was before training (evaluation, and a caller's own work after
        train(), are not left with a count chosen for a busy moment)."""
        import torch

        torch.set_num_threads(self.initial)

    def check(self) -> None:
        import torch

        now = self.clock()
        if self.probe is None or now - self.last < self.every_s:
            return
        self.last = now
        others = self.probe()
        if others is None:
            return
        self.samples.append(others)
        busy = round(sum(self.samples) / len(self.samples))
        wanted = max(1, self.cores - busy)
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
            self.changes += 1
