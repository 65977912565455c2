"""Frozen lower layers computed once vs run on every step: LoRA on SmolLM2's upper layers.

Runs `peftlab run` with and without --cache-frozen-layers, alternating, each in a fresh
process, and prints train samples/s (the once-per-example computation counted in), peak
memory and the test metric, with medians and the ratio. Not part of the tests.

    .venv/bin/python bench/frozen_layers.py [--rounds 3] [--layers 15-29] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_once(args, cache: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "peftlab", "run", "--model", args.model]
        command += ["--dataset", "rotten_tomatoes", "--layers", args.layers, "--out", str(out)]
        command += ["--epochs", str(args.epochs), "--train-samples", str(args.train_samples)]
        command += ["--validation-samples", "50", "--test-samples", str(args.test_samples)]
        command += ["--cache-frozen-layers" if cache else "--no-cache-frozen-layers"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"peftlab run failed:\n{done.stderr[-3000:]}")
        record = json.loads((out / "run.json").read_text())
    train = record["train"]
    return {
        "samples_per_s": round(train["samples"] / train["runtime_s"], 3),
        "peak_memory_mb": train["peak_memory_mb"],
        "accuracy": record["after"]["accuracy"],
        "frozen_layers_cached": train["frozen_layers_cached"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="15-29", help="the layers LoRA trains")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=300)
    parser.add_argument("--test-samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for cache in (True, False) if round_ % 2 == 0 else (False, True):
            result = run_once(args, cache)
            runs[cache].append(result)
            print(f"round {round_ + 1} cache={cache}: {json.dumps(result)}", flush=True)
    medians = {
        cache: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for cache, rs in runs.items()
    }
    print(json.dumps({"cached": medians[True], "every_step": medians[False]}, indent=2))
    ratio = medians[True]["samples_per_s"] / medians[False]["samples_per_s"]
    print(f"train samples/s, cached / every step: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
