"""What starting each run of a comparison costs: runs forked from the preloading
forkserver (peftlab's default) vs a fresh `python -m peftlab run` per run.

A small real comparison (MiniLM-L6 on Rotten Tomatoes, 2 methods x 2 seeds, tiny
budgets, so starting is a large share), the two ways alternating over rounds in one
window; the median wall time of each and their ratio are printed and written as JSON
with the CPU's flags.

    python bench/child_start.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from busy_machine import summarize

from peftlab.cli import main as peftlab
from peftlab.comparison import child

COMPARE = ["compare", "--model", "minilm-l6", "--dataset", "rotten_tomatoes"]
COMPARE += ["--methods", "lora,ia3", "--seeds", "0,1", "--train-samples", "64"]
COMPARE += ["--validation-samples", "32", "--test-samples", "64", "--forgetting-samples", "0"]


def timed_compare(way: str, out: Path) -> float:
    child.FORKSERVER.enabled = way == "forkserver"
    started = time.perf_counter()
    assert peftlab([*COMPARE, "--out", str(out)]) == 0
    return round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/child_start.json"))
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"forkserver": [], "fresh": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for way in list(seconds)[:: 1 if round_ % 2 else -1]:
                seconds[way].append(timed_compare(way, Path(scratch) / f"{way}{round_}"))
                print(f"round {round_}: {way} {seconds[way][-1]} s", flush=True)
    result = summarize(seconds, "fresh", "forkserver", runs_per_compare=4)
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
