"""AdamW's step, torch's default (foreach) against its fused kernel, on the trainable
parameters of real runs, with the share of a training step it takes.

For each case (a built-in model with a method attached as `peftlab run` attaches it):
the optimizer that training/loop.py builds, with random gradients, stepped alternately
in the foreach and fused forms over rounds in one window; then one forward and backward
of a real batch (8 reviews) for scale. Medians are printed and written as JSON with the
CPU's flags. The two forms must agree: the largest parameter difference after the same
steps is reported beside the times.

    python bench/optimizer_step.py --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from busy_machine import cpu_flags
from loaded import load

from peftlab.config import RunConfig
from peftlab.training.loop import make_optimizer

CASES = {"minilm-full": ("minilm-l6", "full"), "minilm-lora": ("minilm-l6", "lora")}
CASES["smollm2-lora"] = ("smollm2-135m", "lora")
STEPS_PER_TIMING = 10


def build(model_name: str, method_name: str):
    cfg = RunConfig()
    cfg.model.name, cfg.method.name = model_name, method_name
    cfg.data.name, cfg.data.test_samples = "rotten_tomatoes", 8
    run = load(cfg)
    batch = run.task.collate(run.task.encode(run.dataset.splits["test"][:8]))
    return run.cfg, run.model, run.task, batch


def optimizer_for(model, cfg, fused: bool) -> torch.optim.Optimizer:
    """training/loop.py's groups and rates, in the form asked for."""
    built = make_optimizer(model, cfg.train)
    groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")}
              for g in built.param_groups]  # fmt: skip
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=fused, foreach=not fused)


def seconds_per_step(optimizer) -> float:
    started = time.perf_counter()
    for _ in range(STEPS_PER_TIMING):
        optimizer.step()
    return (time.perf_counter() - started) / STEPS_PER_TIMING


def forward_backward_s(model, task, batch) -> float:
    model.train()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        task.loss(model, batch).backward()
        best = min(best, time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    return best


def measure(case: str, rounds: int) -> dict:
    cfg, model, task, batch = build(*CASES[case])
    models = {"foreach": model, "fused": copy.deepcopy(model)}
    torch.manual_seed(0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.randn_like(p) * 1e-3 for p in trainable]
    optimizers = {}
    for way, m in models.items():
        for p, g in zip((p for p in m.parameters() if p.requires_grad), grads, strict=True):
            p.grad = g.clone()
        optimizers[way] = optimizer_for(m, cfg, fused=way == "fused")
    seconds: dict[str, list[float]] = {"foreach": [], "fused": []}
    for round_ in range(rounds):
        for way in list(seconds)[:: 1 if round_ % 2 else -1]:
            seconds[way].append(seconds_per_step(optimizers[way]))
    params = [[p for p in m.parameters() if p.requires_grad] for m in models.values()]
    differ = max((a - b).abs().max().item() for a, b in zip(*params, strict=True))
    step = forward_backward_s(model, task, batch)
    medians = {way: statistics.median(s) for way, s in seconds.items()}
    return {
        "trainable_params": sum(p.numel() for p in trainable),
        "threads": torch.get_num_threads(),
        "median_step_ms": {way: round(1000 * s, 3) for way, s in medians.items()},
        "foreach_over_fused": round(medians["foreach"] / medians["fused"], 2),
        "forward_backward_ms": round(1000 * step, 1),
        "foreach_share_of_step": round(medians["foreach"] / (medians["foreach"] + step), 4),
        "max_param_difference": differ,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=Path("bench/optimizer_step.json"))
    args = parser.parse_args()
    result = {"cpu_flags": cpu_flags(), "rounds": args.rounds, "cases": {}}
    for case in args.cases.split(","):
        result["cases"][case] = measure(case, args.rounds)
        print(case, json.dumps(result["cases"][case]), flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
