"""Scoring the default model's test reviews beside a CPU burner: threads governed by
the free cores (peftlab's default) vs a fixed team of one thread per core.

One process, one loaded model (SmolLM2-135M, Rotten Tomatoes); the two ways alternate
over rounds in the same window, first one then the other, and medians are printed and
written as JSON with the CPU's flags. `--idle` leaves the burner out (the governor must
cost nothing there).

    python bench/busy_evaluation.py --rounds 4 [--idle] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from busy_machine import summarize

from peftlab.config import RunConfig
from peftlab.data import assets, sources
from peftlab.models import loading
from peftlab.runner.checks import resolved
from peftlab.tasks.setup import build_task, model_info, padding_side
from peftlab.training import threads
from peftlab.training.evaluate import evaluate


def load(test_samples: int):
    cfg = RunConfig()
    cfg.data.test_samples = test_samples
    cfg = resolved(cfg)
    source = assets.resolve_model(cfg.model.name)
    info = model_info(source, cfg)
    dataset = sources.load(cfg.data)
    tokenizer = loading.load_tokenizer(source, padding_side(info))
    task = build_task(cfg, info, dataset, tokenizer)
    model = loading.load_model(source, info, dataset.label_names, tokenizer, False)
    return model, task, task.encode(dataset.splits["test"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--idle", action="store_true", help="no burner beside it")
    parser.add_argument("--out", type=Path, default=Path("bench/busy_evaluation.json"))
    args = parser.parse_args()
    model, task, items = load(args.samples)
    cores = threads.usable_cores()
    burn = "pass" if args.idle else "while True: pass"
    burner = subprocess.Popen([sys.executable, "-c", burn])
    seconds: dict[str, list[float]] = {"governed": [], "fixed": []}
    try:
        time.sleep(3)  # the burner is running, and the governor's first look sees it
        for round_ in range(args.rounds):
            for way in list(seconds)[:: 1 if round_ % 2 else -1]:
                threads._fixed_in_process = 0 if way == "governed" else cores
                torch.set_num_threads(cores)
                started = time.perf_counter()
                evaluate(model, task, items, 32, args.precision)
                seconds[way].append(round(time.perf_counter() - started, 2))
                print(f"round {round_}: {way} {seconds[way][-1]} s", flush=True)
    finally:
        burner.kill()
    facts = {"cores": cores, "burner": not args.idle, "precision": args.precision}
    result = summarize(seconds, "fixed", "governed", **facts, samples=args.samples)
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
