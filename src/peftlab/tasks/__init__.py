"""Task families: how examples become model inputs, what the loss is, how it is scored.

TASK_SPECS says, without importing torch, what each task reports, so that reports and
leaderboards built from run records know which metric leads and which way is better.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    metric: str  # the headline metric: leaderboard order and "gain over base"
    greater_is_better: bool
    scores: tuple[str, ...]  # metrics shown next to it in tables and plots
    validation: str  # what picks the best checkpoint during training


TASK_SPECS = {
    "classification": TaskSpec("classification", "accuracy", True, ("accuracy", "f1"), "accuracy"),
    "summarization": TaskSpec(
        "summarization", "rouge1", True, ("rouge1", "rouge2", "rougeL", "rougeLsum"), "loss"
    ),
    "causal_lm": TaskSpec("causal_lm", "perplexity", False, ("perplexity",), "loss"),
}


def spec_of(record: dict) -> TaskSpec:
    """The spec of a run record (records from before generation tasks are classification)."""
    return TASK_SPECS[record["config"].get("task", {}).get("name", "classification")]
