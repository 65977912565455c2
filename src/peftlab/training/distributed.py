"""Process-group facts and helpers: one code path for one process and for many.

`torchrun` and `accelerate launch` start N copies of `peftlab run` and describe the group
in environment variables (RANK, WORLD_SIZE, MASTER_ADDR, ...). `init()` joins it through
accelerate (gloo on CPU, NCCL on GPU), the same state the training loop's Accelerator
then uses. In a plain single process nothing is initialised and every helper answers
for a group of one, so torch.distributed is never needed there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def init():
    """Join the launcher's process group, if any, and pin this process's device.

    Idempotent (accelerate keeps one shared state). Called before anything rank-dependent,
    so that a quantized model loads onto this process's GPU and broadcasts work.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Without cpu=True accelerate ignores a torchrun launch on a machine without GPUs; the
    # flag must match the training loop's Accelerator, which refuses a changed state.
    cpu = not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    return PartialState(cpu=cpu)


def unmet_process_request() -> str | None:
    """Why `accelerate launch --num_processes N` started one process, if it did.

    Without GPUs and without --multi_gpu, accelerate's simple launcher starts the script
    once and passes the request on nowhere (accelerate 1.15), so the launcher's own command
    line (our parent's) is the only place it is written."""
    import os

    import psutil

    if "WORLD_SIZE" in os.environ or "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return None  # a process group's member, or not started by accelerate launch
    try:
        argv = psutil.Process(os.getppid()).cmdline()
    except psutil.Error:
        return None
    launcher = ("launch", "accelerate.commands.launch")  # accelerate launch, python -m ...
    if not any(arg in launcher or arg.endswith("accelerate-launch") for arg in argv[:4]):
        return None
    asked = next((argv[i + 1] for i, arg in enumerate(argv[:-1])
                  if arg in ("--num_processes", "--num-processes")), None)  # fmt: skip
    if asked is None or not asked.isdigit() or int(asked) < 2:
        return None
    return (
        f"accelerate launch was asked for {asked} processes but started one: on a machine "
        "without GPUs, add --multi_gpu (accelerate then starts that many processes, joined "
        f"over gloo on the CPU): accelerate launch --multi_gpu --num_processes {asked} ..."
    )


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def num_processes() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    """ "gloo", "nccl", ... when distributed; None in a single process."""
    return dist.get_backend() if active() else None


def device() -> torch.device:
    """This process's device: its own GPU (cuda:LOCAL_RANK) when there are several."""
    return init().device


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (any picklable value)."""
    if num_processes() == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    init()
    return broadcast_object_list([obj], from_process=0)[0]


def gather_object(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    if num_processes() == 1:
        return [obj]
    from accelerate.utils import gather_object as gather

    init()
    return gather([obj])  # accelerate flattens the ranks' lists: one item each


def barrier() -> None:
    if num_processes() > 1:
        init().wait_for_everyone()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (a one-time download or conversion), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def main_only(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log` on rank 0 and silence elsewhere: N processes print one log, not N copies."""
    return log if is_main() else _silent


def _silent(message: str) -> None:
    pass
