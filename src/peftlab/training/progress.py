"""When a training run says how it is doing, and when it writes a checkpoint.

Without a terminal (a batch job, a log file) there is no live progress bar: a line goes
out every tenth of the steps and at least every 30 seconds, with the loss, the speed and
the time left. A checkpoint is written every `checkpoint_every` steps and also once
`checkpoint_minutes` have passed since the last one, so a run too slow to reach its
first step-based checkpoint can still be resumed (a busy 2-core machine once took 31
minutes for 12 steps of a 25-step checkpoint interval). The clock decides in a
single-process run only: every process of a group must agree on when to checkpoint
(they wait for each other there), and their clocks do not.
"""

from __future__ import annotations

import time

LOG_SECONDS = 30.0


def duration(seconds: float) -> str:
    """3 s, 4 min 05 s, 1 h 02 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    def __init__(self, total_steps: int, args, log, processes: int = 1, clock=time.monotonic):
        self.total_steps = total_steps
        self.log_every = max(1, total_steps // 10)
        self.checkpoint_every = args.checkpoint_every
        self.checkpoint_seconds = 60 * args.checkpoint_minutes if processes == 1 else 0
        self.log = log
        self.clock = clock
        self.last_line = self.last_checkpoint = clock()
        self.logged_step = None

    def step_done(self, state) -> None:
        """A log line for the step just taken, when one is due."""
        now = self.clock()
        if state.step % self.log_every and now - self.last_line < LOG_SECONDS:
            return
        since = state.step - (self.logged_step or state.step - self.log_every)
        recent = [h["loss"] for h in state.history[-max(1, since) :]]
        per_step = state.train_seconds / max(1, state.step)
        self.log(
            f"step {state.step}/{self.total_steps}: loss {sum(recent) / len(recent):.4f}, "
            f"{state.samples / max(state.train_seconds, 1e-9):.2f} samples/s, "
            f"{duration(per_step * (self.total_steps - state.step))} left"
        )
        self.last_line, self.logged_step = now, state.step

    def checkpoint_due(self, step: int, done: bool) -> bool:
        """Whether to write a checkpoint after `step` (its clock restarts if so)."""
        if not self.checkpoint_every:  # 0: no checkpoints at all
            return False
        by_steps = step % self.checkpoint_every == 0
        by_time = self.checkpoint_seconds and self.clock() - self.last_checkpoint >= (
            self.checkpoint_seconds
        )
        if by_steps or by_time or done:
            self.last_checkpoint = self.clock()
            return True
        return False
