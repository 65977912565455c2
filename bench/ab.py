"""One lever, A/B: peftlab at two git revisions on one vs_peer case, alternating.

    python bench/ab.py HEAD~1 --lever "no pad-to-8 in fp32" --case smollm2-lora --rounds 3
    python bench/ab.py main HEAD --case minilm-lora --quick
    python bench/ab.py HEAD HEAD --lever "compiled blocks" \
        --a-option compile_training=off --b-option compile_training=on

Each round runs both versions in fresh processes (the order rotates every round) with the
same harness (this checkout's bench/vs_peer.py); only the package differs, imported from
a worktree of each revision (`B` defaults to this working tree, uncommitted changes
included); `--a-option` / `--b-option KEY=VALUE` give A or B a training setting of its
own, to measure a lever a setting turns on or off at one revision. Medians of train
samples/s, peak RSS and the test metric, B over A, are printed and added to
bench/levers.json under this CPU's key, the lever's name and the case, so a kept lever's
figure and a dropped one's both stay on record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import vs_peer  # noqa: E402

from peftlab.fsutil import write_json_atomic  # noqa: E402


def worktree(rev: str, into: Path) -> Path:
    """A detached checkout of `rev` in a folder of its own under `into` (A and B may be
    the same revision); the working tree itself for "WORKTREE"."""
    if rev == "WORKTREE":
        return ROOT
    into.mkdir(parents=True, exist_ok=True)
    path = into / rev.replace("/", "_").replace("~", "-")
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True
    )
    return path


def measure(tree: Path, case: str, quick: bool, options: list[str] = ()) -> dict:
    seed = vs_peer.COMMON["seed"]
    return vs_peer.run_in_process(
        case, "peftlab", seed, quick, package=tree / "src", options=options
    )


def medians(runs: list[dict]) -> dict:
    keys = ("samples_per_s", "peak_memory_mb", "metric")
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="the revision without the lever (e.g. HEAD~1, main)")
    parser.add_argument("b", nargs="?", default="WORKTREE", help="with it (default: this tree)")
    parser.add_argument("--lever", required=True, help="what B changes, as the record names it")
    parser.add_argument("--case", default="smollm2-lora", choices=list(vs_peer.CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the case's --quick sizes")
    for side in "ab":
        parser.add_argument(
            f"--{side}-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"a training setting {side.upper()} runs with (a TrainArgs field, e.g. "
            "compile_training=on; repeatable): a lever a setting turns on or off, A and B "
            "then the same revision",
        )
    parser.add_argument("--out", default=str(HERE / "levers.json"))
    args = parser.parse_args()
    vs_peer.train_options(args.a_option + args.b_option)  # a bad pair fails before any run
    with tempfile.TemporaryDirectory() as scratch:
        trees = {side: worktree(getattr(args, side), Path(scratch) / side) for side in "ab"}
        try:
            runs = alternate(trees, args)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "-f", str(tree)])
    record(args, runs)
    return 0


def alternate(trees: dict, args) -> dict:
    runs: dict[str, list] = {"a": [], "b": []}
    for round_ in range(args.rounds):
        for side in ("a", "b") if round_ % 2 == 0 else ("b", "a"):
            options = getattr(args, f"{side}_option")
            result = measure(trees[side], args.case, args.quick, options)
            runs[side].append(result)
            print(
                f"round {round_ + 1} {side} ({getattr(args, side)}): "
                f"{result['samples_per_s']:.3f} samples/s, {result['peak_memory_mb']:.0f} MB, "
                f"metric {result['metric']:.4f}",
                flush=True,
            )
    return runs


def record(args, runs: dict) -> None:
    a, b = medians(runs["a"]), medians(runs["b"])
    entry = {
        "case": args.case + (" (quick)" if args.quick else ""),
        "a": {"rev": args.a, "options": args.a_option, **a, "rounds": runs["a"]},
        "b": {"rev": args.b, "options": args.b_option, **b, "rounds": runs["b"]},
        "speedup": round(b["samples_per_s"] / a["samples_per_s"], 3),
        "round_speedups": [
            round(rb["samples_per_s"] / ra["samples_per_s"], 3)
            for ra, rb in zip(runs["a"], runs["b"], strict=True)
        ],
        "memory_ratio": round(b["peak_memory_mb"] / a["peak_memory_mb"], 3),
        "metric_points": round(100 * (b["metric"] - a["metric"]), 2),
    }
    print(json.dumps({k: v for k, v in entry.items() if k not in ("a", "b")}), flush=True)
    out = Path(args.out)
    levers = json.loads(out.read_text()) if out.exists() else {}
    key, info = vs_peer.this_machine()
    by_lever = levers.setdefault(key, {"machine": info, "levers": {}})["levers"]
    by_lever.setdefault(args.lever, {})[entry["case"]] = entry  # one lever, several cases
    write_json_atomic(out, levers)


if __name__ == "__main__":
    sys.exit(main())
