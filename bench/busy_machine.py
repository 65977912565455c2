"""Training speed alone and with an identical run beside it, per way of using threads.

Each `peftlab run` is a fresh process (OMP_WAIT_POLICY is read when torch loads its
OpenMP runtime). For each policy: one run alone, then two identical runs started together
on the same cores; the slowdown is the alone samples/s over each side-by-side run's (the
fair share on a machine the two split evenly is 2x). Policies alternate over rounds in the
same time window; medians are printed and written as JSON with the CPU's flags.

    python bench/busy_machine.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = ["--model", "minilm-l6", "--dataset", "rotten_tomatoes", "--method", "lora"]
RUN += ["--train-samples", "480", "--test-samples", "50", "--forgetting-samples", "0"]
# name -> (environment, `peftlab run` flags) of both runs
POLICIES = {
    "core_share": ({}, []),  # peftlab's default: threads follow the cores left free
    "fixed_threads": ({}, ["--threads", "2"]),  # what torch does by itself on 2 cores
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", "2"]),
    "spin_10k": ({"GOMP_SPINCOUNT": "10000"}, ["--threads", "2"]),
}


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":")[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return [f for f in wanted if f in flags]


def summarize(seconds: dict[str, list[float]], slower: str, faster: str, **facts) -> dict:
    """Seconds per way, alternated in one window: their medians and the ratio, with the
    CPU's flags, as the two-way benchmarks write them."""
    medians = {way: statistics.median(s) for way, s in seconds.items()}
    return {
        "cpu_flags": cpu_flags(),
        **facts,
        "seconds": seconds,
        "median_s": medians,
        f"{slower}_over_{faster}": round(medians[slower] / medians[faster], 2),
    }


def start(out: Path, policy: tuple[dict, list[str]]) -> subprocess.Popen:
    unset = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(policy[0])
    command = [sys.executable, "-m", "peftlab", "run", *RUN, *policy[1], "--out", str(out)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def speed(out: Path) -> float:
    return json.loads((out / "run.json").read_text())["train"]["samples_per_s"]


def measure(folder: Path, policy: tuple[dict, list[str]], tag: str) -> dict:
    alone = folder / f"{tag}-alone"
    if start(alone, policy).wait() != 0:
        sys.exit(f"the run in {alone} failed")
    pair = [folder / f"{tag}-pair{i}" for i in range(2)]
    processes = [start(out, policy) for out in pair]
    if any(p.wait() != 0 for p in processes):
        sys.exit(f"a run in {folder} failed")
    alone_speed = speed(alone)
    beside = [speed(out) for out in pair]
    return {
        "alone_samples_per_s": alone_speed,
        "side_by_side_samples_per_s": beside,
        "slowdown": max(alone_speed / s for s in beside),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", default="bench/busy_machine.json")
    args = parser.parse_args()
    rounds = {name: [] for name in args.policies.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(rounds) if r % 2 == 0 else list(reversed(rounds))
            for name in order:
                result = measure(Path(tmp), POLICIES[name], f"r{r}-{name}")
                rounds[name].append(result)
                print(
                    f"round {r + 1} {name}: alone {result['alone_samples_per_s']:.1f} samples/s, "
                    f"side by side {result['side_by_side_samples_per_s']}, slowdown "
                    f"{result['slowdown']:.2f}x",
                    flush=True,
                )
    medians = {
        name: {
            "alone_samples_per_s": statistics.median(r["alone_samples_per_s"] for r in results),
            "slowdown": statistics.median(r["slowdown"] for r in results),
        }
        for name, results in rounds.items()
    }
    for name, m in medians.items():
        print(
            f"{name:15s} alone {m['alone_samples_per_s']:.1f} samples/s, "
            f"slowdown {m['slowdown']:.2f}x"
        )
    record = {"cpu_flags": cpu_flags(), "cores": len(os.sched_getaffinity(0)), "rounds": rounds}
    Path(args.out).write_text(json.dumps({**record, "medians": medians}, indent=1))


if __name__ == "__main__":
    main()
