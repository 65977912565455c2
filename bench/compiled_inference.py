"""Compiled inference against eager: evaluation and `predict` of 1,000 texts.

One LoRA adapter is trained once (MiniLM-L6 on Rotten Tomatoes, a short run: what is
measured here is inference). Then, each in a fresh process (a second run of the tool, as
a user has it): the first compiled run with an empty compile cache, then eager and
compiled runs alternating, timed from the call (evaluate / Predictor.predict) to its
result, so the compiled runs include loading the library and handing it the weights.
Evaluation runs the adapter unmerged (as `peftlab run` evaluates the tuned model),
predict merged (as `peftlab predict` does by default). Labels are compared run by run.

    python bench/compiled_inference.py --rounds 5 [--out bench/compiled_inference.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
MODEL = "minilm-l6"
TEXTS = 1000
# fp32: the only precision compiled inference covers (`auto` is bf16 on a CPU with native
# bf16, and predict runs in the run's precision).
TRAIN = ["--method", "lora", "--train-samples", "400", "--epochs", "1", "--seed", "0"]
TRAIN += ["--precision", "fp32"]
KINDS = ("evaluate", "predict")


def train_adapter(work: Path) -> Path:
    run_dir = work / "run"
    command = [sys.executable, "-m", "peftlab", "run", "--model", MODEL, *TRAIN]
    command += ["--test-samples", str(TEXTS), "--out", str(run_dir)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return run_dir / "adapter"


def measure_one(kind: str, compile: bool, adapter: Path) -> dict:
    """In this process: one evaluation or prediction of the test split's texts."""
    from peftlab.adapters.inference import Predictor
    from peftlab.adapters.package import open_package
    from peftlab.training.evaluate import evaluate

    package = open_package(str(adapter), False)
    predictor = Predictor(package, merged=kind == "predict", compile=compile)
    test = package_test_rows(predictor)
    if kind == "evaluate":
        items = predictor.task.encode(test)
        out = evaluate(predictor.model, predictor.task, items, 32, "fp32", compile=compile)
        labels = out["per_example"]
        seconds = out["runtime_s"]
    else:
        start = time.perf_counter()
        results = predictor.predict([row.text for row in test], batch_size=32)
        seconds = time.perf_counter() - start
        labels = [r["label"] for r in results]
    digest = hashlib.md5(json.dumps(labels).encode()).hexdigest()
    return {"seconds": round(seconds, 3), "labels_md5": digest, "texts": len(test)}


def package_test_rows(predictor) -> list:
    """The run's own test split (the adapter's manifest says how it was drawn)."""
    from peftlab.data import sources

    cfg = predictor.package.config
    return sources.load(cfg.data, cfg.task.name).splits["test"]


def run_in_process(kind: str, compile: bool, adapter: Path, home: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--one", kind, str(int(compile)), str(adapter)]
        command += ["--result", out.name]
        env = {**os.environ, "PEFTLAB_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{kind} compile={compile} failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def measure(rounds: int, work: Path) -> dict:
    adapter = train_adapter(work)
    home = work / "home"
    report = {}
    for kind in KINDS:
        first = run_in_process(kind, True, adapter, home)
        print(f"{kind}: first compiled run {first['seconds']} s", flush=True)
        eager, compiled = [], []
        for r in range(rounds):
            eager.append(run_in_process(kind, False, adapter, home))
            compiled.append(run_in_process(kind, True, adapter, home))
            print(
                f"{kind} round {r + 1}: eager {eager[-1]['seconds']} s, "
                f"compiled {compiled[-1]['seconds']} s",
                flush=True,
            )
        report[kind] = summarize(first, eager, compiled)
    return report


def summarize(first: dict, eager: list[dict], compiled: list[dict]) -> dict:
    e = statistics.median(r["seconds"] for r in eager)
    c = statistics.median(r["seconds"] for r in compiled)
    digests = {r["labels_md5"] for r in [first, *eager, *compiled]}
    return {
        "texts": first["texts"],
        "eager_s": e,
        "compiled_s": c,
        "speedup": round(e / c, 3),
        "first_compiled_s": first["seconds"],
        "rounds": [[a["seconds"], b["seconds"]] for a, b in zip(eager, compiled, strict=True)],
        "labels_identical": len(digests) == 1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "compiled_inference.json")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "COMPILE", "ADAPTER"))
    parser.add_argument("--result", type=Path)
    args = parser.parse_args()
    if args.one:
        kind, compile, adapter = args.one
        args.result.write_text(json.dumps(measure_one(kind, compile == "1", Path(adapter))))
        return 0
    sys.path.insert(0, str(HERE))
    from vs_peer import this_machine

    with tempfile.TemporaryDirectory() as work:
        report = measure(args.rounds, Path(work))
    cpu, details = this_machine()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[cpu] = {**details, "model": MODEL, **report}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
